"""The documentation's links resolve and its command reference lists every console script."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_command_reference_lists_every_console_script() -> None:
    scripts = re.findall(r"^(nnunetv2_xlstm_\w+) = ", (ROOT / "pyproject.toml").read_text(), re.M)
    reference = (ROOT / "docs" / "reference" / "commands.md").read_text()
    assert len(scripts) >= 10 and all(f"## {s}\n" in reference for s in scripts)
