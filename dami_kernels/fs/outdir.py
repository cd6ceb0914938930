"""Write an output directory (a merged checkpoint, a saved pair, CLI results) without ever losing data.

`write_output_dir(out_dir, overwrite=...)` checks everything before any work, yields a fresh temporary
directory beside `out_dir` (``.NAME.dami-tmp-PID-RANDOM``) to write into, and publishes it at the end:

- ``overwrite=False``: one ``renameat2(RENAME_NOREPLACE)``. If `out_dir` appeared while we were writing, the
  rename fails (FileExistsError) and nothing that exists is touched.
- ``overwrite=True``: replaces only a directory that this project wrote (it holds the marker file
  ``MARKER``) or an empty one. One ``renameat2(RENAME_EXCHANGE)`` swaps old and new, so that either the
  complete old or the complete new directory is at `out_dir` at every instant; then the old copy (now at
  the temporary name) is deleted. If the swapped-out directory turns out not to be replaceable (someone
  put a foreign directory there after the check), it is swapped back and nothing is deleted.
- A temporary directory whose writer is dead (the PID in its name is not running: a killed run) is removed
  by the next run on the same `out_dir`, which warns about it; one of a live writer is left alone.
- Fallback where ``renameat2`` is missing (not Linux, or a file system without it): the writers hold an
  exclusive ``flock`` on the parent directory while they check and rename. Without overwrite a plain
  ``rename`` onto an existing non-empty directory fails on POSIX, so nothing is lost. With overwrite the old
  directory is first renamed to ``.NAME.dami-old-PID-RANDOM``; a run killed between the two renames leaves
  `out_dir` missing for a moment, and the next run on that `out_dir` renames the old copy back.

Files written get the mode a new file gets under the user's umask (safetensors creates 0600 files).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

MARKER = ".dami_output.json"
_TMP, _OLD = "dami-tmp", "dami-old"
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


class _Unsupported(Exception):
    """renameat2 is missing or the file system does not support the flag."""


def _rename2(src: Path, dst: Path, flags: int) -> None:
    """renameat2(src, dst, flags); FileExistsError when dst exists under RENAME_NOREPLACE."""
    if _renameat2 is None:
        raise _Unsupported
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        raise _Unsupported
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    _rename2(src, dst, _RENAME_NOREPLACE)


def _rename_exchange(src: Path, dst: Path) -> None:
    _rename2(src, dst, _RENAME_EXCHANGE)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def current_umask() -> int:
    """The process umask (read from /proc where possible: os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """Give every regular file under root the mode a new file gets under the umask (0666 & ~umask)."""
    mode = 0o666 & ~current_umask()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, mode)


def is_replaceable(path: Path) -> bool:
    """True for a directory this project wrote (holds MARKER) or an empty directory."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / MARKER).is_file() or not any(path.iterdir())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.({_TMP}|{_OLD})-(\d+)-[0-9a-f]+")


def clean_leftovers(out_dir: Path) -> list[str]:
    """Remove temporary directories of killed runs on out_dir (restore an old copy if out_dir is missing).

    Returns one line per thing done; directories of live writers (PID running) are not touched.
    """
    parent, done = out_dir.parent, []
    if not parent.is_dir():
        return done
    pattern = _leftover_pattern(out_dir.name)
    for entry in sorted(parent.iterdir()):
        m = pattern.fullmatch(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        kind, pid = m.group(1), int(m.group(2))
        if _pid_alive(pid):
            continue  # a running writer's directory (another run on out_dir, maybe this process)
        if kind == _OLD and not os.path.lexists(out_dir):
            os.rename(entry, out_dir)
            done.append(f"restored {out_dir} from {entry.name}, left by a killed overwrite")
        else:
            _remove_tree(entry)
            done.append(f"removed {entry.name}, left by a killed run (pid {pid})")
    return done


def _relation(out: Path, inp: Path) -> str | None:
    if out == inp:
        return "is"
    if out in inp.parents:
        return "contains"
    if inp in out.parents:
        return "lies inside"
    return None


def preflight(out_dir: Path, *, overwrite: bool, inputs: Sequence, what: str, overwrite_flag: str) -> None:
    """Every check write_output_dir makes before any work (see its docstring)."""
    if out_dir.is_symlink():
        raise ValueError(f"{what} output {out_dir} is a symbolic link; give the directory it points to")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{what} output {out_dir} exists and is not a directory")
    resolved = out_dir.resolve()
    for inp in inputs:
        rel = _relation(resolved, Path(inp).resolve())
        if rel is not None:
            raise ValueError(f"{what} output {out_dir} {rel} the input {inp}; choose a directory outside the inputs")
    for anc in resolved.parents:
        if anc.exists() and not anc.is_dir():
            raise NotADirectoryError(f"{what} output {out_dir}: {anc} is a file, not a directory")
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{what} output {out_dir} exists; pass {overwrite_flag} to replace it")
        if not is_replaceable(out_dir):
            raise ValueError(
                f"{what} output {out_dir} holds files that dami_kernels did not write (no {MARKER} marker); "
                f"{overwrite_flag} only replaces directories it wrote itself. Delete or move it yourself, or "
                "choose another directory"
            )


def _publish(tmp: Path, out_dir: Path, *, overwrite: bool, what: str, overwrite_flag: str) -> None:
    appeared = f"{what} output {out_dir} appeared while it was being written; nothing was replaced"
    try:
        if not overwrite or not os.path.lexists(out_dir):
            try:
                _rename_noreplace(tmp, out_dir)
                return
            except FileExistsError:  # RENAME_NOREPLACE: out_dir exists now
                if not overwrite:
                    raise FileExistsError(f"{appeared}; pass {overwrite_flag} to replace it") from None
        if not is_replaceable(out_dir):
            raise ValueError(f"{appeared}: it is not a directory that dami_kernels wrote (no {MARKER})")
        _rename_exchange(tmp, out_dir)
        if not is_replaceable(tmp):  # a foreign directory took out_dir's place after the check: put it back
            _rename_exchange(tmp, out_dir)
            raise ValueError(f"{appeared}: it is not a directory that dami_kernels wrote (no {MARKER})")
        _remove_tree(tmp)  # the old copy
    except _Unsupported:
        _publish_locked(tmp, out_dir, overwrite=overwrite, appeared=appeared, overwrite_flag=overwrite_flag)


@contextmanager
def _parent_lock(parent: Path):
    """An exclusive flock on the parent directory (held by the fallback's check-and-rename)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): os.rename refuses an existing target there anyway
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _publish_locked(tmp: Path, out_dir: Path, *, overwrite: bool, appeared: str, overwrite_flag: str) -> None:
    with _parent_lock(out_dir.parent):
        if os.path.lexists(out_dir):
            if not overwrite:
                raise FileExistsError(f"{appeared}; pass {overwrite_flag} to replace it")
            if not is_replaceable(out_dir):
                raise ValueError(f"{appeared}: it is not a directory that dami_kernels wrote (no {MARKER})")
            old = out_dir.parent / f".{out_dir.name}.{_OLD}-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            _remove_tree(old)
        else:
            try:  # POSIX: fails on a non-empty directory that appeared without taking the lock
                os.rename(tmp, out_dir)
            except OSError as err:
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(f"{appeared}; pass {overwrite_flag} to replace it") from None
                raise


def _write_marker(tmp: Path, what: str) -> None:
    from dami_kernels import __version__

    (tmp / MARKER).write_text(json.dumps({"written_by": "dami_kernels", "version": __version__, "what": what}) + "\n")


@contextmanager
def write_output_dir(
    out_dir, *, overwrite: bool, inputs: Sequence = (), what: str = "checkpoint", overwrite_flag: str = "overwrite=True"
) -> Iterator[Path]:
    """Check out_dir, yield a fresh temporary directory beside it to write into, publish it atomically.

    Before any work: out_dir a file -> NotADirectoryError; out_dir exists, is not empty and not overwrite
    -> FileExistsError (an empty directory is replaced as with overwrite); out_dir is, contains or lies
    inside one of `inputs` (resolved, symlinks followed) -> ValueError; overwrite of a non-empty directory
    without the MARKER file -> ValueError; out_dir a symlink -> ValueError. Leftovers of killed runs on
    out_dir are removed (with a warning). On success the marker is written and the directory published
    (module docstring); on any error or interrupt the temporary directory is removed and out_dir is
    untouched. `what` and `overwrite_flag` word the
    messages (the CLI passes "--overwrite").
    """
    out_dir = Path(out_dir).absolute()
    if not overwrite and out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
        # An existing empty directory (e.g. made by mkdir or a test's tmp dir) loses nothing: it is replaced
        # the way overwrite replaces one, atomically, and the exchange is undone if it filled meanwhile.
        overwrite = True
    notes = clean_leftovers(out_dir)  # first: it may restore out_dir from a killed fallback overwrite
    if notes:
        warnings.warn(f"{what} output {out_dir}: " + "; ".join(notes), stacklevel=3)
    preflight(out_dir, overwrite=overwrite, inputs=inputs, what=what, overwrite_flag=overwrite_flag)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{_TMP}-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        yield tmp
        _write_marker(tmp, what)
        _apply_umask(tmp)
        _publish(tmp, out_dir, overwrite=overwrite, what=what, overwrite_flag=overwrite_flag)
    finally:
        if os.path.lexists(tmp):
            _remove_tree(tmp)
