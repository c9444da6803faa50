"""The README's quick start and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command() -> None:
    demo, tests = _quick_start_commands()
    assert "nnunetv2_xlstm_demo" in demo and "pytest" in tests
    assert tests in ROOT.joinpath(".ci", "run").read_text()


def test_readme_demo_command_names_an_installed_console_script() -> None:
    demo, _ = _quick_start_commands()
    script = demo.rsplit("/", 1)[-1].split()[0]
    assert f"{script} = " in ROOT.joinpath("pyproject.toml").read_text()
