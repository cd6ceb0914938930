"""Issue 12, items 1-5: write_output_dir checks before any work, publishes atomically, never deletes data it
did not write (also on the fallback without renameat2), and gives files the user's umask."""

import os
import stat
import threading
import warnings

import pytest
from kill_points import leftovers, tree

import dami_kernels as dk
import dami_kernels.fs.outdir as outdir
from dami_kernels.fs.outdir import MARKER, write_output_dir
from tiny_pairs import cached_pair

FILES = {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01beta"}


def _write(tmp, files=FILES):
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)


def _publish(out, files=FILES, **kw):
    with write_output_dir(out, overwrite=kw.pop("overwrite", False), **kw) as tmp:
        _write(tmp, files)
    return out


def _content(out):
    got = tree(out)
    return None if got is None else {k: v for k, v in got.items() if k != MARKER}


@pytest.fixture(params=["renameat2", "fallback"])
def mode(request, monkeypatch):
    """Every behaviour holds with renameat2 and on the lock-based fallback used where it is missing."""
    if request.param == "renameat2":
        assert outdir._renameat2 is not None  # this Linux has it: the tests exercise the real syscall
    else:
        monkeypatch.setattr(outdir, "_renameat2", None)
    return request.param


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_new_dir_published_with_marker_and_nothing_left(tmp_path, mode):
    out = _publish(tmp_path / "deep" / "out")
    assert _content(out) == FILES and (out / MARKER).is_file()
    assert leftovers(out) == []


def test_preflight_errors_come_before_any_work(tmp_path, mode):
    (tmp_path / "file").write_text("x")
    ran = []
    cases = [
        (tmp_path / "file", {}, NotADirectoryError, "not a directory"),
        (tmp_path / "file" / "sub", {}, NotADirectoryError, "is a file"),
        (tmp_path / "inp", {"inputs": [tmp_path / "inp"]}, ValueError, "is the input"),
        (tmp_path, {"inputs": [tmp_path / "inp"], "overwrite": True}, ValueError, "contains the input"),
        (tmp_path / "inp" / "x", {"inputs": [tmp_path / "inp"]}, ValueError, "lies inside the input"),
    ]
    (tmp_path / "inp").mkdir()
    for out, kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            with write_output_dir(out, overwrite=kw.get("overwrite", False), inputs=kw.get("inputs", ())):
                ran.append(out)
    assert ran == []
    # an input reached through a symlink counts too (paths are resolved)
    (tmp_path / "link").symlink_to(tmp_path / "inp")
    with pytest.raises(ValueError, match="lies inside the input"):
        _publish(tmp_path / "link" / "out", inputs=[tmp_path / "inp"])
    with pytest.raises(ValueError, match="symbolic link"):
        _publish(tmp_path / "link", overwrite=True)


def test_existing_dirs(tmp_path, mode):
    out = _publish(tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _publish(out, {"n.txt": b"new"}, overwrite_flag="--overwrite")
    assert _content(out) == FILES
    _publish(out, {"n.txt": b"new"}, overwrite=True)  # ours (marker): replaced as a whole
    assert _content(out) == {"n.txt": b"new"}
    foreign = tmp_path / "mine"
    _write_user(foreign)
    with pytest.raises(ValueError, match="did not write"):
        _publish(foreign, overwrite=True)
    assert tree(foreign) == USER
    empty = tmp_path / "empty"
    empty.mkdir()
    _publish(empty, overwrite=True)
    assert _content(empty) == FILES


USER = {"notes.txt": b"mine", "sub/x": b"also mine"}


def _write_user(path):
    path.mkdir()
    _write(path, USER)


def test_out_dir_appearing_during_the_write_is_never_deleted(tmp_path, mode):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        with write_output_dir(out, overwrite=False) as tmp:
            _write(tmp)
            _write_user(out)  # the user (or another run) creates out_dir meanwhile
    assert tree(out) == USER and leftovers(out) == []


def test_overwrite_never_replaces_a_foreign_dir_swapped_in_meanwhile(tmp_path, mode):
    out = _publish(tmp_path / "out")
    with pytest.raises(ValueError, match="not a directory that dami_kernels wrote"):
        with write_output_dir(out, overwrite=True) as tmp:
            _write(tmp, {"new": b"new"})
            os.rename(out, tmp_path / "ours-moved")
            _write_user(out)
    assert tree(out) == USER and leftovers(out) == []


def test_error_inside_removes_temp_and_keeps_old(tmp_path, mode):
    out = _publish(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        with write_output_dir(out, overwrite=True) as tmp:
            _write(tmp, {"half": b"x"})
            raise KeyboardInterrupt
    assert _content(out) == FILES and leftovers(out) == []


def test_concurrent_writers_exactly_one_wins(tmp_path, mode):
    out = tmp_path / "out"
    barrier, results = threading.Barrier(2), {}

    def writer(k):
        try:
            with write_output_dir(out, overwrite=False) as tmp:
                _write(tmp, {"who": str(k).encode() * 1000})
                barrier.wait(timeout=30)  # both are mid-write before either publishes
            results[k] = "ok"
        except FileExistsError:
            results[k] = "exists"

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["exists", "ok"]
    winner = [k for k, v in results.items() if v == "ok"][0]
    assert _content(out) == {"who": str(winner).encode() * 1000} and leftovers(out) == []


def test_concurrent_merges_exactly_one_succeeds(tmp_path, monkeypatch):
    import dami_kernels.pair.merge as merge

    paths, out = cached_pair("qwen3"), tmp_path / "m"
    barrier, save, results = threading.Barrier(2), merge.save_file, []

    def save_then_wait(*a, **k):
        save(*a, **k)
        barrier.wait(timeout=60)

    monkeypatch.setattr(merge, "save_file", save_then_wait)

    def run(lam):
        try:
            dk.merge_pair(paths.instruct, paths.thinking, lam, out, progress=False)
            results.append(("ok", lam))
        except FileExistsError as err:
            results.append(("exists", str(err)))

    threads = [threading.Thread(target=run, args=(lam,)) for lam in (0.2, 0.8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results) == ["exists", "ok"], results
    assert "appeared while it was being written" in [r for r in results if r[0] == "exists"][0][1]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert float(f.metadata()["dami_lambda"]) == [r for r in results if r[0] == "ok"][0][1]


def test_leftovers_of_dead_writers_removed_live_ones_kept(tmp_path, mode):
    out = tmp_path / "out"
    dead = tmp_path / f".out.dami-tmp-{_dead_pid()}-0badc0de"
    live = tmp_path / f".out.dami-tmp-{os.getpid()}-00c0ffee"
    for d in (dead, live):
        d.mkdir()
        (d / "partial").write_text("x")
    with pytest.warns(UserWarning, match="removed .out.dami-tmp-[0-9]+-0badc0de, left by a killed run") as rec:
        _publish(out)
    assert "00c0ffee" not in str(rec[0].message)
    assert not dead.exists() and live.exists()  # a live writer's directory is never touched


def test_killed_fallback_overwrite_is_restored(tmp_path, mode):
    """The fallback's window: old renamed aside, new not yet in place, process killed. The next run restores."""
    out = _publish(tmp_path / "out")
    aside = tmp_path / f".out.dami-old-{_dead_pid()}-12345678"
    os.rename(out, aside)
    with pytest.warns(UserWarning, match="restored"):
        with pytest.raises(FileExistsError):
            _publish(out, {"other": b"x"})
    assert _content(out) == FILES and leftovers(out) == []


def test_files_get_the_user_umask(tmp_path, mode):
    old = os.umask(0o002)
    try:
        with write_output_dir(tmp_path / "out", overwrite=False) as tmp:
            f = tmp / "secret"
            f.write_text("x")
            os.chmod(f, 0o600)  # as safetensors' save_file creates its files
        assert stat.S_IMODE((tmp_path / "out" / "secret").stat().st_mode) == 0o664
        paths = cached_pair("qwen3")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = dk.merge_pair(paths.instruct, paths.thinking, 0.5, tmp_path / "m", progress=False)
        for f in m.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o664, f.name
        assert stat.S_IMODE(m.stat().st_mode) == 0o775
    finally:
        os.umask(old)


def test_file_created_in_out_dir_during_a_merge_is_kept(tmp_path, monkeypatch, mode):
    """Issue item 1 as reported: merge_pair(overwrite=False) used to delete what appeared in out_dir meanwhile."""
    import dami_kernels.pair.merge as merge

    paths, out, save = cached_pair("qwen3"), tmp_path / "m", merge.save_file

    def save_then_user_writes(*a, **k):
        save(*a, **k)
        _write_user(out)

    monkeypatch.setattr(merge, "save_file", save_then_user_writes)
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        dk.merge_pair(paths.instruct, paths.thinking, 0.5, out, progress=False)
    assert tree(out) == USER and leftovers(out) == []
