"""Issue 12, items 1, 4: a merge killed (SIGKILL) at any point never loses or half-writes out_dir.

Real processes: a `python` subprocess running merge_pair that the test SIGKILLs while it waits at a named
stage (kill_points), and a hypothesis property test over random sequences of merges, kills (forked
children that SIGKILL themselves at a stage), overwrites and user-created directories.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kill_points import STAGES, install_kill_hooks, leftovers, self_kill, tree

import dami_kernels as dk
from tiny_pairs import make_pair

pytestmark = pytest.mark.slow  # SIGKILLed subprocesses

HERE = Path(__file__).resolve().parent  # tests/reliability/, where kill_points.py lives
LAMS = (0.25, 0.75)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A sharded tiny pair and the reference merges at each λ in LAMS ({λ: {file: bytes}})."""
    root = tmp_path_factory.mktemp("kill")
    paths = make_pair(root / "i", root / "t", "llama", max_shard_size="30KB")
    refs = {
        lam: tree(dk.merge_pair(paths.instruct, paths.thinking, lam, root / f"ref{lam}", progress=False))
        for lam in LAMS
    }
    assert len([n for n in refs[0.25] if n.endswith(".safetensors")]) > 2  # several shards: "writing" is mid-way
    assert refs[0.25] != refs[0.75]
    return paths, refs


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from kill_points import install_kill_hooks
    def wait_for_kill():
        print("AT-STAGE", flush=True)
        time.sleep(120)
    install_kill_hooks({stage!r}, wait_for_kill)
    from dami_kernels.pair import merge_pair
    merge_pair({i!r}, {t!r}, {lam!r}, {out!r}, overwrite={overwrite!r}, progress=False)
    print("FINISHED", flush=True)
""")


def _wait_for_kill_fork(stage, paths, lam, out, overwrite) -> int:
    """Fork a child that runs the merge and writes one byte to a pipe when it reaches `stage`; its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)

        def wait_for_kill():
            os.write(w, b"!")
            time.sleep(120)

        try:
            install_kill_hooks(stage, wait_for_kill)
            dk.merge_pair(paths.instruct, paths.thinking, lam, out, overwrite=overwrite, progress=False)
        finally:
            os._exit(1)
    os.close(w)
    try:
        assert os.read(r, 1) == b"!", f"the child never reached {stage}"
    finally:
        os.close(r)
    return pid


def _kill_at(stage, paths, lam, out, overwrite, spawn):
    """Run merge_pair in a child process (a fresh interpreter, or a fork of this one) and SIGKILL it at stage."""
    if spawn == "fork":
        pid = _wait_for_kill_fork(stage, paths, lam, out, overwrite)
        os.kill(pid, signal.SIGKILL)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
        return
    code = CHILD.format(
        tests=str(HERE),
        stage=stage,
        i=str(paths.instruct),
        t=str(paths.thinking),
        lam=lam,
        out=str(out),
        overwrite=overwrite,
    )
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}  # the repo root
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "AT-STAGE", (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Two cases run in a fresh interpreter (python -c, killed by the test); the rest in forked children (cheaper:
# no second torch import on a busy machine), also killed by the test with SIGKILL.
@pytest.mark.parametrize(
    "stage,had_old,expect,spawn",
    [
        ("writing", False, None, "exec"),
        ("before_publish", False, None, "fork"),
        ("writing", True, "old", "fork"),
        ("before_exchange", True, "old", "fork"),
        ("after_exchange", True, "new", "fork"),
        ("mid_delete", True, "new", "exec"),
    ],
)
def test_sigkill_keeps_old_or_new(sharded, tmp_path, stage, had_old, expect, spawn):
    paths, refs = sharded
    out = tmp_path / "merged"
    if had_old:
        dk.merge_pair(paths.instruct, paths.thinking, 0.25, out, progress=False)
    _kill_at(stage, paths, 0.75, out, overwrite=had_old, spawn=spawn)
    assert tree(out) == {None: None, "old": refs[0.25], "new": refs[0.75]}[expect]
    assert leftovers(out)  # the killed run left its temporary directory (or the old copy) behind
    # the next run on the same out_dir removes the leftovers, says so, and works
    with pytest.warns(UserWarning, match="left by a killed run"):
        dk.merge_pair(paths.instruct, paths.thinking, 0.75, out, overwrite=True, progress=False)
    assert tree(out) == refs[0.75]
    assert leftovers(out) == []


def _forked(fn) -> int:
    """Run fn() in a forked child; its exit status (-9 when it SIGKILLed itself)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
        except FileExistsError:
            code = 3
        except ValueError:
            code = 4
        except BaseException:  # noqa: BLE001
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# Operations: ("merge", λ, overwrite), ("kill", λ, overwrite, stage), ("user", None) = the user makes out_dir
# holding their own file.
OPS = st.one_of(
    st.tuples(st.just("merge"), st.sampled_from(LAMS), st.booleans()),
    st.tuples(st.just("kill"), st.sampled_from(LAMS), st.booleans(), st.sampled_from(STAGES)),
    st.tuples(st.just("user"), st.none()),
)
USER = {"notes.txt": b"my notes"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=5))
def test_random_merges_kills_overwrites_never_lose_data(sharded, tmp_path_factory, ops):
    paths, refs = sharded
    out = tmp_path_factory.mktemp("prop") / "merged"
    state = None  # what out_dir must hold: None, a λ (that merge, complete) or "user"
    for op in ops:
        if op[0] == "user":
            if state is None:
                out.mkdir()
                (out / "notes.txt").write_bytes(USER["notes.txt"])
                state = "user"
            continue
        kind, lam, overwrite = op[:3]

        def run(stage=op[3] if kind == "kill" else None, lam=lam, overwrite=overwrite):
            if stage is not None:
                install_kill_hooks(stage, self_kill)
            dk.merge_pair(paths.instruct, paths.thinking, lam, out, overwrite=overwrite, progress=False)

        status = _forked(run)
        if state is None:  # a kill before the rename leaves nothing; the exchange stages are not on this path
            if kind == "kill" and op[3] in ("writing", "before_publish"):
                assert status == -signal.SIGKILL
            else:
                assert status == 0
                state = lam
        elif state == "user":
            assert status == (4 if overwrite else 3)  # refused before any work: foreign files, or no overwrite
        elif not overwrite:
            assert status == 3  # FileExistsError, nothing touched
        elif kind == "merge":
            assert status == 0
            state = lam
        else:  # overwrite killed at a stage
            assert status == -signal.SIGKILL or op[3] == "before_publish"  # that stage is not on this path
            if op[3] in ("after_exchange", "mid_delete") or (op[3] == "before_publish" and status == 0):
                state = lam
        expected = None if state is None else (USER if state == "user" else refs[state])
        assert tree(out) == expected, (ops, op, status)
    if state != "user":  # a final plain run cleans every leftover of the killed runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dk.merge_pair(paths.instruct, paths.thinking, 0.25, out, overwrite=True, progress=False)
        assert tree(out) == refs[0.25] and leftovers(out) == []
