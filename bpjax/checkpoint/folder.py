"""A run folder: the checkpoints of one training run, one entry per saved step, with one writer at a time.

Layout of ``checkpoint_path`` (``fit`` creates the folder; its parent must exist)::

    run/
      step_00000030.npz       one entry per save (bp.checkpoint.save), the newest `keep` kept
      step_00000060.npz
      LOCK                    {"host", "pid", "start"} of the run writing here
      .step_00000090.npz.tmp-<pid>-<hex>   an unfinished save (removed at the next save or restore)

An entry becomes visible only once whole (the atomic write of :mod:`bpjax.checkpoint.atomic`), and
only finite state is ever saved (the trainer skips a non-finite save), so the newest readable
entry is the one to resume from; :func:`newest` falls back to an older one, with a warning, when the
newest fails its checks. :func:`prune` keeps the newest ``keep`` entries after every save.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
import warnings
from typing import Callable, List, Optional, Tuple, TypeVar

from bpjax import errors
from bpjax.checkpoint.atomic import temporary_of

__all__ = ["ENTRY_PATTERN", "LOCK_NAME", "DamagedCheckpointWarning", "StaleLockWarning", "acquire", "entries",
           "entry_path", "is_run_folder", "newest", "prepare", "prune", "release", "remove_temporaries"]

ENTRY_PATTERN = re.compile(r"step_(?P<step>\d{8,})\.(?P<backend>npz|orbax)")
LOCK_NAME = "LOCK"
T = TypeVar("T")


class DamagedCheckpointWarning(UserWarning):
    """A run folder's newest entry failed its checks and an older one was used."""


class StaleLockWarning(UserWarning):
    """A run folder's lock was left by a process of this host that no longer runs; it was taken over."""


def entry_path(folder: str, step: int, backend: str = "npz") -> str:
    """``<folder>/step_<step:08d>.<backend>``: the entry of ``step``."""
    return os.path.join(folder, f"step_{step:08d}.{backend}")


def entries(folder: str) -> List[Tuple[int, str]]:
    """``[(step, path), ...]`` of the folder's entries, newest first (``[]`` for a missing folder)."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m["step"]), os.path.join(folder, n)) for n in os.listdir(folder)
             if (m := ENTRY_PATTERN.fullmatch(n))]
    return sorted(found, reverse=True)


def is_run_folder(path: str) -> bool:
    """Whether ``path`` is a folder holding run entries or a lock (not itself one entry)."""
    return os.path.isdir(path) and not ENTRY_PATTERN.fullmatch(os.path.basename(os.path.normpath(path))) and (
        bool(entries(path)) or os.path.exists(os.path.join(path, LOCK_NAME)))


def newest(folder: str, read: Callable[[str], T], where: str) -> Optional[Tuple[int, str, T]]:
    """``(step, path, read(path))`` of the newest entry that ``read`` accepts, or ``None`` without entries.

    An entry that ``read`` refuses with a :class:`~bpjax.errors.BpjaxError` (truncated, corrupted, checksum) is
    skipped with a :class:`DamagedCheckpointWarning` naming it and the reason; when every entry is
    refused, the newest one's error is raised.
    """
    failures = []
    for step, path in entries(folder):
        try:
            value = read(path)
        except errors.BpjaxError as e:
            failures.append((path, e))
            continue
        for bad, err in failures:
            warnings.warn(f"{where}: skipped the damaged checkpoint {bad!r} ({err.message}); using "
                          f"{os.path.basename(path)} (step {step})", DamagedCheckpointWarning, stacklevel=3)
        return step, path, value
    if failures:
        raise failures[0][1]
    return None


def prune(folder: str, keep: int) -> List[str]:
    """Delete all but the newest ``keep`` entries; returns the deleted paths."""
    gone = [path for _, path in entries(folder)[keep:]]
    for path in gone:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return gone


def remove_temporaries(folder: str) -> List[str]:
    """Delete the temporary files and folders of unfinished saves in ``folder``; returns their paths."""
    if not os.path.isdir(folder):
        return []
    gone = [os.path.join(folder, n) for n in os.listdir(folder) if temporary_of(n) is not None]
    for path in gone:
        try:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        except FileNotFoundError:  # removed by another cleaner meanwhile
            pass
    return gone


def prepare(folder: str, where: str) -> None:
    """Make ``folder`` ready for a run before its first step: created when missing (its parent must exist),
    a folder and not a file, and writable (a probe file is written, flushed, synced and removed).

    The temporary files of earlier unfinished saves are removed by the lock's holder
    (:func:`remove_temporaries`), never by a reader: another run may be saving.
    """
    parent = os.path.dirname(os.path.abspath(folder))
    if os.path.isfile(folder):
        raise errors.BpjaxError(where, f"checkpoint_path {folder!r}: expected a run folder (or a new name), "
                                       f"found a file; a single checkpoint written by bp.checkpoint.save is "
                                       f"read with bp.checkpoint.restore, not resumed by fit")
    if not os.path.isdir(parent):
        found = "is a file" if os.path.exists(parent) else "does not exist"
        tilde = "; '~' is not expanded: pass os.path.expanduser(path)" if folder.startswith("~") else ""
        raise errors.BpjaxError(where, f"checkpoint_path {folder!r}: expected its parent folder to exist, "
                                       f"{parent!r} {found}{tilde}")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".probe.tmp-{os.getpid()}-{secrets.token_hex(8)}")
        with open(probe, "xb") as f:
            f.write(b"bpjax")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise errors.BpjaxError(where, f"checkpoint_path {folder!r}: expected a folder this process can write "
                                       f"checkpoints to, got {type(e).__name__}: {e.strerror or e} (checked "
                                       f"before the first step)") from None


# ---------------------------------------------------------------- one writer per folder


def _holder(folder: str) -> Optional[dict]:
    try:
        with open(os.path.join(folder, LOCK_NAME)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host')!r}, pid {holder.get('pid')}, started {holder.get('start')}"
            if holder else "an unreadable lock")


def acquire(folder: str, where: str) -> dict:
    """Take ``folder``'s lock for this process; returns the lock record (pass it to :func:`release`).

    The lock is the file ``LOCK``, created exclusively with this process's host, pid, start time and a
    random token. A lock held by a live process (or by another host) is a :class:`~bpjax.errors.BpjaxError` naming
    it; a lock of a process of this host that no longer runs is stale and taken over with a
    :class:`StaleLockWarning`.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": secrets.token_hex(8)}
    data = json.dumps(me).encode()
    path = os.path.join(folder, LOCK_NAME)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(folder)
            if holder is None:
                continue  # released meanwhile: try again
            stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                     and holder["pid"] != me["pid"] and not _alive(holder["pid"]))
            if not stale:
                same = holder.get("host") == me["host"] and holder.get("pid") == me["pid"]
                who = "another fit call of this process" if same else f"another run ({_describe(holder)})"
                raise errors.BpjaxError(where, f"checkpoint_path {folder!r} is held by {who}: two runs writing "
                                               f"one folder would resume and overwrite each other's checkpoints. "
                                               f"Wait for it to end or use another checkpoint_path; if that run "
                                               f"is gone (e.g. on another host), delete {path!r}")
            warnings.warn(f"{where}: checkpoint_path {folder!r} was locked by a process that no longer runs "
                          f"({_describe(holder)}); taking the lock over", StaleLockWarning, stacklevel=3)
            tmp = os.path.join(folder, f".{LOCK_NAME}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, path)
            if _holder(folder) == me:
                return me
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return me
    raise errors.BpjaxError(where, f"checkpoint_path {folder!r}: could not take the lock {path!r} (another run "
                                   f"keeps taking it)")


def release(folder: str, lock: dict) -> None:
    """Remove ``folder``'s lock when it is still the one :func:`acquire` returned."""
    if _holder(folder) == lock:
        try:
            os.remove(os.path.join(folder, LOCK_NAME))
        except FileNotFoundError:
            pass
