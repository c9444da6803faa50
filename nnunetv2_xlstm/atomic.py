"""Write files atomically: to a temporary file beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (parents created); the temporary file is removed if
    ``write`` fails. The temporary name keeps ``path``'s suffix, for writers that go by it (e.g. matplotlib)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))
