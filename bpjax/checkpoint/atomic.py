"""The atomic write of a checkpoint: a temporary file, flushed, fsync-ed, renamed onto the path, directory fsync-ed."""

from __future__ import annotations

import os
import re
import secrets
import zipfile
from typing import Optional

from bpjax import errors
from bpjax.checkpoint.encoding import META

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: same tree, same bytes
_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-\d+-[0-9a-f]+")  # a whole basename written by _create_temp
# the temporary directory where orbax-checkpoint writes a sharded checkpoint before renaming it (its commit)
_ORBAX_TEMP = re.compile(r"(?P<name>.+)\.orbax-checkpoint-tmp.*")


def temporary_of(basename: str) -> Optional[str]:
    """The name of the checkpoint whose unfinished save left ``basename`` (a temporary file of a ``.npz`` save or
    orbax's temporary directory of a sharded one), else ``None``. Such entries are never read; delete them once
    no save is running."""
    m = _TEMP.fullmatch(basename) or _ORBAX_TEMP.fullmatch(basename)
    return m["name"] if m else None


def _create_temp(where: str, directory: str, name: str):
    """``(temp path, file open for writing)``: a new ``.<name>.tmp-<pid>-<random>`` in ``directory``.

    Created with ``O_EXCL``: a name another writer holds is never opened, a fresh one is drawn.
    """
    for _ in range(16):
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            return tmp, open(tmp, "xb")
        except FileExistsError:
            continue
    raise errors.BpjaxError(where, f"expected a free temporary file name in {directory!r}, found 16 taken")


def atomic_write(where: str, path: str, members, meta_bytes: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        tmp, f = _create_temp(where, directory, os.path.basename(path))
        with f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for i, data in enumerate(members):
                    zf.writestr(zipfile.ZipInfo(f"leaf_{i:05d}.npy", _ZIP_DATE), data)
                zf.writestr(zipfile.ZipInfo(META, _ZIP_DATE), meta_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise errors.BpjaxError(where, f"could not write the checkpoint: {type(e).__name__}: "
                                           f"{e.strerror or e}") from e
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
