"""Inputs that must never be taken as something else: save_pair onto the directories the pair came from, and λ
lists holding anything but numbers (one validator for set_lambda, lambda_scope and the layers' LambdaState)."""

import pytest
import torch

import dami_kernels as dk
from tiny_pairs import cached_pair


@pytest.fixture(scope="module")
def pair():
    paths = cached_pair("qwen3")
    return paths, dk.load_pair(paths.instruct, paths.thinking, progress=False)


@pytest.mark.parametrize(
    "bad", [[True, False], ["0.1", "0.9"], [b"0.5", 0.1], [[0.1, 0.2]], [None, 0.1], [], [0.1, 10**400], (0.2, "x")]
)
def test_bad_lambda_lists_are_value_errors_everywhere(pair, bad):
    """Each was accepted (booleans, strings and bytes read as numbers) or a TypeError (a nested list)."""
    _, model = pair
    dk.set_lambda(model, [0.25, 0.75])
    with pytest.raises(ValueError, match="lam"):
        dk.set_lambda(model, bad)
    with pytest.raises(ValueError, match="lam"):
        with dk.lambda_scope(model, bad):
            pass
    with pytest.raises(ValueError, match="lam"):
        dk.set_lambda(model, bad, expand=2)
    assert torch.equal(dk.pair.lambda_state(model).lam, torch.tensor([0.25, 0.75]))  # unchanged


def test_good_lambda_lists_still_work(pair):
    _, model = pair
    dk.set_lambda(model, [0, 1, 0.5])  # ints are numbers
    assert dk.pair.lambda_state(model).lam.tolist() == [0.0, 1.0, 0.5]
    with dk.lambda_scope(model, (0.1, 0.2), expand=2) as state:
        assert state.lam.tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2])


def test_save_pair_refuses_the_directories_the_pair_was_loaded_from(tmp_path):
    """save_pair(load_pair(D, T), D, overwrite=True) with D a `dami merge` output used to turn D into instruct/ and
    thinking/ and delete its tokenizer: an out_dir that is, contains or lies inside a source is refused, and the
    source is untouched."""
    paths = cached_pair("qwen3")
    merged = tmp_path / "merged"
    dk.merge_pair(paths.instruct, paths.thinking, 0.5, merged, progress=False)
    before = sorted(p.name for p in merged.iterdir())
    model = dk.load_pair(merged, paths.thinking, progress=False)
    for out in (merged, tmp_path, merged / "sub"):
        with pytest.raises(ValueError, match="the input"):
            dk.save_pair(model, out, overwrite=True, progress=False)
    assert sorted(p.name for p in merged.iterdir()) == before
    saved = dk.save_pair(model, tmp_path / "elsewhere", progress=False)  # anywhere else is fine
    assert (saved / "instruct" / "config.json").is_file()
