"""Atomic outputs: a killed job never leaves a torn output, and its leftovers are removed next time.

One mechanism for every output (a file, the pool, a converted checkpoint, a built dataset): the
output is written into a fresh hidden *staging* entry beside it, in the same directory (so the
same file system), and published with ONE ``rename(2)``:

- a file or a directory output (``atomic_write``, ``atomic_dir``): the staging entry is renamed
  onto the output path;
- a multi-file output with a pointer (a built dataset, ``versioned_dir``): the staging directory
  is a new *version*, and the one pointer file that names it (``PREFIX.json``) is replaced
  atomically; the previous version is deleted after the switch.

Staging names carry their owner: ``.NAME.KIND-HOST-PID-RANDOM`` (``KIND`` is ``tmp`` for
temporaries, ``v`` for dataset versions). Before staging a new one, ``remove_stale`` deletes the
staging entries of the same output whose owner process is dead on this host, so a killed run's
leftovers (up to a whole model or dataset) go away on the next run. Entries of live processes,
of other hosts, of other outputs, and anything not named this way are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from megatron_vlm.errors import ConfigError, LongVLMError, OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Outputs get the usual umask-based modes (not mkstemp's private 0600), so that a pool or dataset
# written by one user is readable by the others on a cluster.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

HOST = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname()) or "localhost"
TEMP = "tmp"
VERSION = "v"
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|v)-(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")


def _fsync_dir(path: Path) -> None:
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


def staging_name(target: str | os.PathLike, kind: str = TEMP) -> Path:
    """A fresh ``.NAME.KIND-HOST-PID-RANDOM`` path beside ``target``, owned by this process."""
    target = Path(target)
    return target.with_name(f".{target.name}.{kind}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def staging_owner(path: str | os.PathLike) -> tuple[str, str, str, int] | None:
    """``(output name, kind, host, pid)`` of a staging entry's name, or ``None`` if it is not one."""
    m = _STAGED.match(Path(path).name)
    return (m["name"], m["kind"], m["host"], int(m["pid"])) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(target: str | os.PathLike, keep: Callable[[Path], bool] = lambda path: False) -> list[Path]:
    """Delete the staging entries of ``target`` left by dead processes of this host; returns them.

    An entry is removed only if its name is ``.NAME.KIND-HOST-PID-RANDOM`` with NAME ``target``'s
    name, HOST this host, PID not running, and ``keep(path)`` is false (a built dataset keeps the
    version its pointer names).
    """
    target = Path(target)
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    prefix = f".{target.name}."
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        owner = staging_owner(entry.name)
        if owner is None or owner[0] != target.name or owner[2] != HOST or _pid_alive(owner[3]):
            continue
        path = Path(entry.path)
        if keep(path):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def make_staging_dir(target: str | os.PathLike, kind: str = TEMP) -> Path:
    """Remove ``target``'s stale staging entries, then create a fresh staging directory for it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == TEMP:  # versions are cleaned by their owner (``versioned_dir``), which knows the live one
        remove_stale(target)
    path = staging_name(target, kind)
    path.mkdir(mode=0o777)  # minus the umask: DIR_MODE
    return path


def publish(staged: Path, target: str | os.PathLike, replace_empty_dir: bool = False) -> None:
    """Rename the staged directory onto ``target`` (which must not exist, or with
    ``replace_empty_dir`` may be an empty directory): the one atomic step of a directory output."""
    target = Path(target)
    if target.exists() and not (replace_empty_dir and target.is_dir() and not any(target.iterdir())):
        raise OutputExistsError(f"{target} already exists; refusing to overwrite it (remove it or choose another output)")
    try:
        os.rename(staged, target)  # onto an empty directory: replaces it (POSIX)
    except OSError as err:  # created meanwhile by someone else
        raise OutputExistsError(f"{target}: cannot publish the output there ({err.strerror})") from None
    _fsync_dir(target.parent)


def check_creatable(path: str | os.PathLike, name: str | None = None, error: type[LongVLMError] = ConfigError) -> None:
    """Raise ``error`` naming ``name`` (an option) and ``path`` if ``path`` cannot be created: an ancestor
    is a file, or the nearest existing folder is not writable."""
    path = Path(path)
    what = f"{name} {path}" if name else str(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise error(f"{what}: cannot be created ({parent} is a file, not a folder)")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{what}: cannot be created ({parent} is not writable)")


def check_output_file(path: str | os.PathLike, name: str | None = None, *, replace: bool = True,
                      exists_hint: str = "choose a new file name") -> None:
    """Before any work: ``path`` can be written as a file (``replace``: an existing file may be replaced);
    a ``ConfigError`` / ``OutputExistsError`` naming ``name`` (an option) or the path otherwise."""
    path = Path(path)
    what = f"{name} {path}" if name else str(path)
    if path.is_dir():
        raise ConfigError(f"{what}: is a folder; name a file")
    if path.exists() and not replace:
        raise OutputExistsError(f"{what} exists; {exists_hint}")
    check_creatable(path, name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a staging file beside ``path``; on success it replaces ``path``, on error it is removed.
    ``path`` naming a folder, or a place that cannot be created, is a ``ConfigError`` naming it."""
    path = Path(path)
    check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = staging_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # minus the umask: FILE_MODE
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace_empty_dir: bool = False) -> Iterator[Path]:
    """Yield a staging directory that becomes ``path`` on success (``path`` must not exist, or with
    ``replace_empty_dir`` may be an empty directory). On error the staging directory is deleted
    and ``path`` is left untouched; after a kill, the next ``atomic_dir`` for ``path`` deletes it."""
    path = Path(path)
    if path.exists() and not (replace_empty_dir and path.is_dir() and not any(path.iterdir())):
        raise OutputExistsError(f"{path} already exists; refusing to overwrite it (remove it or choose another output)")
    tmp = make_staging_dir(path)
    try:
        yield tmp
        publish(tmp, path, replace_empty_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def versioned_dir(target: str | os.PathLike, current: str | None) -> Iterator[Path]:
    """A new version directory ``.NAME.v-...`` of a multi-file output ``target`` whose pointer file
    names its live version.

    ``current`` is the version the pointer names now (``None``: none). Stale versions and
    temporaries of dead processes are removed first (never ``current``). The caller writes the
    files into the yielded directory and then replaces the pointer atomically (``write_json``)
    inside the block: that is the commit. After the block the previous version is deleted; on an
    error before the commit the new version is deleted and the old one stays live.
    """
    target = Path(target)
    remove_stale(target, keep=lambda path: path.name == current)
    new = make_staging_dir(target, VERSION)
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if current and current != new.name:
        shutil.rmtree(target.parent / current, ignore_errors=True)
