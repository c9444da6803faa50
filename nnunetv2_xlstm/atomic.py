"""Write files atomically: to a temporary file beside the target, fsync, then rename, so a crash or a power loss never
leaves half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from nnunetv2_xlstm.env import InputError


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (parents created); the temporary file is removed if
    ``write`` fails. The temporary name keeps ``path``'s suffix, for writers that go by it (e.g. matplotlib). The file
    gets the usual umask-derived mode (e.g. 0644), not the temporary file's 0600. A folder that cannot be written
    (read-only, full disk) raises :class:`InputError` naming ``path`` and the cause."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        _fsync(tmp)  # the data on disk before the name points at it: a power loss leaves the old file or the new
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        full = full_disk_error(path, e)
        if full is not None:
            raise full from None
        raise
    return path


LOW_DISK_BYTES = 64 * 2 ** 20  # a writer that fails with less free space than this is taken to have run out of disk


def full_disk_error(path: str | Path, error: BaseException) -> InputError | None:
    """An :class:`InputError` naming ``path`` if the disk it is on is (nearly) full, else None: writers such as
    ``torch.save`` and SimpleITK report a full disk as an unrelated error ("unexpected pos", "could not write")."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= LOW_DISK_BYTES:
        return None
    return InputError(f"cannot write {path}: the disk is full ({free / 2 ** 20:.1f} MiB free; the writer said: "
                      f"{str(error).strip()[:120] or type(error).__name__}). Free space or write to another disk")


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; folders that cannot be opened (some platforms) are
    skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_copy(source: str | Path, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))
