"""Running console commands (nnU-Net's and ours) from the demo, the benchmark and the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_command(args: list[str], env: dict[str, str], log: Path | None = None) -> None:
    """Run a console command, its output going to ours or, with ``log``, appended to that file; raise with the
    command line (and the log's path) if it fails.

    The command is looked up next to the running interpreter first, so an unactivated venv works too.
    """
    print("$ " + " ".join(args), flush=True)
    local = Path(sys.executable).parent / args[0]
    command = [str(local) if local.exists() else args[0], *args[1:]]
    if log is None:
        result = subprocess.run(command, env=env)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write("$ " + " ".join(args) + "\n")
            f.flush()
            result = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"command failed with exit code {result.returncode}: {' '.join(args)}"
                           + (f"; its output is in {log}" if log else ""))
