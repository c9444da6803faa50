"""Regenerate commands.md from every console script's ``--help``: ``python docs/reference/generate_commands.py``
(in the environment where the project is installed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    scripts = re.findall(r"^(nnunetv2_xlstm_\w+) = ", (ROOT / "pyproject.toml").read_text(), re.M)
    env = {**os.environ, "COLUMNS": "110"}
    helps = {s: None if s == "nnunetv2_xlstm_env" else subprocess.run(
        [str(Path(sys.executable).parent / s), "--help"], capture_output=True, text=True, env=env, check=True).stdout
        for s in scripts}
    summary = lambda h: next(line.strip() for line in h.split("\n\n")[1].splitlines() if line.strip())
    lines = ["# Reference: commands", "",
             "Every console script with its `--help` (nnU-Net's own commands are documented by nnU-Net). On bad input "
             "each exits with a message that names the culprit and the fix. Regenerate this page with "
             "`python docs/reference/generate_commands.py`.", "", "| command | what |", "| --- | --- |"]
    for s, h in helps.items():
        what = ("prints the `export nnUNet_extTrainer=...` line that lets nnU-Net find our trainers" if h is None
                else summary(h).replace("``", "`").replace("|", "\\|"))
        lines.append(f"| [`{s}`](#{s}) | {what} |")
    for s, h in helps.items():
        lines += ["", f"## {s}", ""]
        lines += (["```bash", 'eval "$(nnunetv2_xlstm_env)"   # adds our trainers to nnUNet_extTrainer', "```"]
                  if h is None else ["```text", h.rstrip(), "```"])
    (ROOT / "docs" / "reference" / "commands.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
