"""torch intra-op threads: one on the tiny testbed pair by default, --threads and DAMI_THREADS override."""

import pytest
import torch

from dami_kernels import testbed
from dami_kernels.cli import main
from dami_kernels.testbed.threads import ENV_VAR, configure_threads, is_testbed_pair, requested_threads


@pytest.fixture
def threads_restored(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_requested_threads_precedence(threads_restored, monkeypatch):
    assert requested_threads() is None
    assert requested_threads(3) == 3
    monkeypatch.setenv(ENV_VAR, "2")
    assert requested_threads() == 2
    assert requested_threads(3) == 3  # the option beats the variable


@pytest.mark.parametrize(
    "value,env,message",
    [
        (0, None, "--threads must be a positive integer"),
        (None, "two", "DAMI_THREADS='two' is not an integer"),
        (None, "-1", "DAMI_THREADS must be a positive integer"),
    ],
)
def test_bad_thread_counts(value, env, message, threads_restored, monkeypatch):
    if env is not None:
        monkeypatch.setenv(ENV_VAR, env)
    with pytest.raises(ValueError, match=message):
        requested_threads(value, "--threads")


def test_configure_threads(threads_restored, monkeypatch):
    torch.set_num_threads(2)
    assert configure_threads(testbed=False) == 2  # another pair keeps torch's setting
    assert configure_threads(testbed=True) == 1
    assert configure_threads(2, testbed=True) == 2
    monkeypatch.setenv(ENV_VAR, "2")
    torch.set_num_threads(1)
    assert configure_threads(testbed=True) == 2


def test_is_testbed_pair(tmp_path):
    instruct, thinking = testbed.testbed_dirs()
    assert is_testbed_pair(instruct, thinking)
    assert not is_testbed_pair(instruct, tmp_path)
    assert not is_testbed_pair(thinking, instruct)


def test_commands_on_the_testbed_pair_use_one_thread(threads_restored, capsys):
    argv = ["estimate", "predict", "--method", "conf", "12+34"]
    torch.set_num_threads(2)
    assert main(argv) == 0
    assert torch.get_num_threads() == 1
    assert main(argv + ["--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    capsys.readouterr()
    assert main(argv + ["--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err
