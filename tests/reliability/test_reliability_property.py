"""A property test over damaged checkpoints: random truncations, header edits, config edits, extra and missing
files and symlinks, on either side. Every case either loads (model and tokenizer) and equals, in a mixed-λ batch,
the fp64 merge of what plain transformers loads from the same two directories (the Instruct config, as the pair
uses it: a benign config edit changes both alike), or raises a ValueError that names a file, a tensor or a
config field; never a hang (each case under 10 s) and never another exception type."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dami_kernels as dk
from dami_kernels.pair import load_pair_and_tokenizer
from numerics import rel_err
from tiny_pairs import cached_pair, merged_fp64_model

pytestmark = pytest.mark.slow  # 200 damaged pairs, each loaded

CONFIG_KEYS = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "model_type",
    "architectures",
    "torch_dtype",
    "auto_map",
]
CONFIG_VALUES = st.sampled_from([-64, 0, 1, 3, 10**6, 2**40, 1.5, "x", None, [], {}, True, "llama"])
FILES = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
]
OUTSIDE = ["/etc/hostname", "/etc/passwd", "/dev/null", "/nonexistent/file"]

DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 0.999)),
    st.tuples(st.just("header"), st.integers(8, 400), st.integers(0, 255)),
    st.tuples(st.just("config"), st.sampled_from(CONFIG_KEYS), CONFIG_VALUES),
    st.tuples(st.just("config_del"), st.sampled_from(CONFIG_KEYS)),
    st.tuples(st.just("remove"), st.sampled_from(FILES)),
    st.tuples(
        st.just("extra"),
        st.sampled_from(
            ["model.safetensors.index.json", "pytorch_model.bin", "notes.txt", "model-00001-of-00002.safetensors"]
        ),
        st.binary(max_size=64),
    ),
    st.tuples(st.just("symlink"), st.sampled_from(FILES), st.sampled_from(OUTSIDE + ["OTHER_SIDE"])),
)


def damage(side: Path, other: Path, kind, *args) -> None:
    if kind == "truncate":
        f = side / args[0]
        if f.is_file():
            data = f.read_bytes()
            f.write_bytes(data[: int(len(data) * args[1])])
    elif kind == "header":
        f = side / "model.safetensors"
        if f.is_file():
            data = bytearray(f.read_bytes())
            if args[0] < len(data):
                data[args[0]] = args[1]
                f.write_bytes(bytes(data))
    elif kind in ("config", "config_del"):
        f = side / "config.json"
        if f.is_file() and not f.is_symlink():
            try:
                cfg = json.loads(f.read_text())
            except ValueError:
                return
            if kind == "config":
                cfg[args[0]] = args[1]
            else:
                cfg.pop(args[0], None)
            f.write_text(json.dumps(cfg))
    elif kind == "remove":
        if (side / args[0]).exists() or (side / args[0]).is_symlink():
            (side / args[0]).unlink()
    elif kind == "extra":
        (side / args[0]).write_bytes(args[1])
    elif kind == "symlink":
        f = side / args[0]
        if f.exists() or f.is_symlink():
            f.unlink()
        os.symlink(other / args[0] if args[1] == "OTHER_SIDE" else args[1], f)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def merged_logits(instruct, thinking, lams, ids) -> torch.Tensor:
    """Row b: the fp64-merged plain model at lams[b] on ids[b]."""
    with torch.no_grad():
        return torch.cat(
            [merged_fp64_model(instruct, thinking, lam)(ids[b : b + 1]).logits for b, lam in enumerate(lams)]
        )


@pytest.fixture(scope="module")
def reference():
    paths = cached_pair("qwen3")
    return paths, [0.0, 0.35, 1.0], torch.randint(3, 60, (3, 7))


@pytest.mark.filterwarnings("ignore:config fields differ")  # a benign config edit on one side: warned, loaded
# The same 200 cases every run (CI); DAMI_FRESH_CASES=1 draws fresh ones (with --hypothesis-seed=N to repeat)
@settings(
    max_examples=200,
    derandomize=not os.environ.get("DAMI_FRESH_CASES"),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(damages=st.lists(st.tuples(st.booleans(), DAMAGE), min_size=1, max_size=3))
def test_damaged_pairs_load_exactly_or_raise_a_value_error_naming_the_culprit(reference, tmp_path_factory, damages):
    paths, lams, ids = reference
    root = tmp_path_factory.mktemp("damaged")
    sides = {False: root / "instruct", True: root / "thinking"}
    shutil.copytree(paths.instruct, sides[False])
    shutil.copytree(paths.thinking, sides[True])
    for thinking, spec in damages:
        damage(sides[thinking], sides[not thinking], *spec)
    names = [str(root), *FILES, "config", "tensor", "model.", "lm_head"]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    t0 = time.monotonic()
    try:
        model, _ = load_pair_and_tokenizer(sides[False], sides[True], progress=False)
    except ValueError as err:
        message = str(err)
        assert "\n" not in message.strip() or len(message) < 2000, message
        assert any(n in message for n in names), (damages, message)
        return
    except _Timeout:
        pytest.fail(f"loading took over 10 s: {damages}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 10
    with torch.no_grad(), dk.lambda_scope(model, torch.tensor(lams)):
        out = model(ids).logits
    assert rel_err(out, merged_logits(sides[False], sides[True], lams, ids)) < 1e-5, damages
