"""Issue 12, items 2, 6, 7, 10 (symlinks, integer tensors), 12: checkpoints never run code, never reach
outside their directory, and every damaged file is a ValueError naming it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dami_kernels as dk
from dami_kernels.hf.checkpoint import open_checkpoint
from dami_kernels.hf.tokenizer import load_tokenizer
from tiny_pairs import cached_pair, hub_snapshot

ROOT = Path(__file__).resolve().parents[2]


def _copy_side(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def _sharded():
    return cached_pair("llama", max_shard_size="30KB")


EVIL_CODE = (
    "open({sentinel!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
)


def _custom_code_dir(path: Path, sentinel: Path, model_type="evil") -> Path:
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps(
            {
                "model_type": model_type,
                "architectures": ["EvilForCausalLM"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"},
            }
        )
    )
    (path / "evil.py").write_text(EVIL_CODE.format(sentinel=str(sentinel)))
    return path


def test_custom_code_never_prompts_never_runs(tmp_path):
    """A piped "y" must not run the checkpoint's Python file: the CLI refuses with one line, exit 2."""
    sentinel = tmp_path / "RAN"
    evil = _custom_code_dir(tmp_path / "evil", sentinel)
    cmd = [
        sys.executable,
        "-m",
        "dami_kernels.cli",
        "merge",
        "--instruct",
        str(evil),
        "--thinking",
        str(evil),
        "--lam",
        "0.5",
        "--out",
        str(tmp_path / "out"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, input="y\ny\n", capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr
    assert "custom-code models are not supported" in res.stderr
    assert "[y/N]" not in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_known_model_type_with_auto_map_and_custom_tokenizer_refused(tmp_path):
    sentinel = tmp_path / "RAN"
    evil = _custom_code_dir(tmp_path / "evil", sentinel, model_type="llama")
    with pytest.raises(ValueError, match="auto_map.*custom-code models are not supported"):
        open_checkpoint(evil)
    side = _copy_side(cached_pair("qwen3").instruct, tmp_path / "tok")
    cfg = json.loads((side / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (side / "tokenizer_config.json").write_text(json.dumps(cfg))
    (side / "evil.py").write_text(EVIL_CODE.format(sentinel=str(sentinel)))
    with pytest.raises(ValueError, match="tokenizer_config.json.*custom-code models are not supported"):
        load_tokenizer(side)
    assert not sentinel.exists()


def test_shard_names_confined_to_the_directory(tmp_path):
    side = _copy_side(_sharded().instruct, tmp_path / "ckpt")
    index_file = side / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    os.rename(side / shard, tmp_path / "outside.safetensors")
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "/etc/passwd"):
        damaged = {**index, "weight_map": {k: (bad if v == shard else v) for k, v in index["weight_map"].items()}}
        index_file.write_text(json.dumps(damaged))
        with pytest.raises(ValueError, match="points outside the checkpoint directory"):
            open_checkpoint(side)
    # a shard that is a symlink to a file outside is refused too; one pointing inside is fine
    index_file.write_text(json.dumps(index))
    (side / shard).symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(ValueError, match=f"{shard}.*points outside"):
        open_checkpoint(side)
    (side / shard).unlink()
    (side / "store").mkdir()
    os.rename(tmp_path / "outside.safetensors", side / "store" / shard)
    (side / shard).symlink_to(Path("store") / shard)
    assert len(open_checkpoint(side).specs()) == len(index["weight_map"])


def test_single_weight_symlink_outside_refused_hub_snapshot_allowed(tmp_path):
    src = cached_pair("qwen3").instruct
    side = _copy_side(src, tmp_path / "ckpt")
    (side / "model.safetensors").unlink()
    (side / "model.safetensors").symlink_to(src / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors.*points outside"):
        open_checkpoint(side)
    # the hub cache layout: snapshots/REV/* are symlinks into the repository's blobs/
    snap = hub_snapshot(src, tmp_path / "models--x--y")
    assert "model.embed_tokens.weight" in open_checkpoint(snap).specs()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: f.write_text(json.dumps({"weight_map": [["a", "b"]]})), "weight_map' must be an object"),
        (lambda f: f.write_bytes(b'{"weight_map": {"a": "\xff\xfe.safetensors"}}'), "not UTF-8"),
        (lambda f: f.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (lambda f: f.write_text(json.dumps({"weight_map": {"a": 3}})), "must be a string"),
    ],
)
def test_damaged_index_names_the_file(tmp_path, damage, message):
    side = _copy_side(_sharded().instruct, tmp_path / "ckpt")
    damage(side / "model.safetensors.index.json")
    with pytest.raises(ValueError, match=message) as err:
        open_checkpoint(side)
    assert "model.safetensors.index.json" in str(err.value)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda c: '{"model_type": "qwen3", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        (
            lambda c: json.dumps({**c, "layer_types": ["full_attention"] * (c["num_hidden_layers"] + 1)}),
            "num_hidden_layers.*layer_types",
        ),
        (lambda c: json.dumps({**c, "model_type": "no_such_model"}), "custom-code models are not supported"),
        (lambda c: "\xff", "config"),
    ],
)
def test_damaged_config_names_the_file(tmp_path, damage, message):
    side = _copy_side(cached_pair("qwen3").instruct, tmp_path / "ckpt")
    cfg = json.loads((side / "config.json").read_text())
    (side / "config.json").write_text(damage(cfg))
    with pytest.raises(ValueError, match=message) as err:
        open_checkpoint(side)
    assert "config.json" in str(err.value)


def test_corrupt_tokenizer_json_names_the_file(tmp_path):
    side = _copy_side(cached_pair("qwen3").instruct, tmp_path / "ckpt")
    (side / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match="tokenizer.json: corrupt tokenizer file"):
        load_tokenizer(side)
    assert load_tokenizer(cached_pair("qwen3").instruct).get_vocab()  # the intact one still loads


def test_merge_refuses_out_dir_above_the_inputs(tmp_path):
    """Item 2: overwrite=True on the parent of both inputs used to delete them."""
    paths = cached_pair("qwen3")
    anc = tmp_path / "anc"
    i, t = _copy_side(paths.instruct, anc / "i"), _copy_side(paths.thinking, anc / "t")
    before = sorted(str(p.relative_to(anc)) for p in anc.rglob("*"))
    for out in (anc, anc / "i", anc / "i" / "sub"):
        with pytest.raises(ValueError, match="(contains|is|lies inside) the input"):
            dk.merge_pair(i, t, 0.5, out, overwrite=True, progress=False)
    assert sorted(str(p.relative_to(anc)) for p in anc.rglob("*")) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        dk.merge_pair(i, t, 0.5, tmp_path / "file", overwrite=True, progress=False)


def test_merge_never_copies_a_symlink_target_from_outside(tmp_path):
    paths = cached_pair("qwen3")
    i = _copy_side(paths.instruct, tmp_path / "i")
    (tmp_path / "secret").write_text("host secret")
    (i / "notes.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(ValueError, match="notes.txt.*points outside"):
        dk.merge_pair(i, paths.thinking, 0.5, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    (i / "notes.txt").unlink()
    (i / "docs").mkdir()
    (i / "docs" / "n.txt").write_text("inside")
    (i / "notes.txt").symlink_to(Path("docs") / "n.txt")  # inside the directory: copied as a plain file
    out = dk.merge_pair(i, paths.thinking, 0.5, tmp_path / "m", progress=False)
    assert (out / "notes.txt").read_text() == "inside" and not (out / "notes.txt").is_symlink()


def test_merge_never_casts_an_integer_tensor(tmp_path):
    paths = cached_pair("qwen3")
    t = _copy_side(paths.thinking, tmp_path / "t")
    tensors = load_file(str(t / "model.safetensors"))
    name = "model.norm.weight"
    tensors[name] = torch.arange(tensors[name].numel(), dtype=torch.int32).reshape(tensors[name].shape)
    save_file(tensors, str(t / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{name}.*never cast"):
        dk.merge_pair(paths.instruct, t, 0.5, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    from dami_kernels.pair.merge import _merge_tensor

    a = torch.tensor([1, 2, 3])
    assert _merge_tensor("ids", a, a.clone(), 0.5).dtype == torch.int64  # equal integers: kept, not cast
    with pytest.raises(ValueError, match="never cast"):
        _merge_tensor("ids", a, a.float(), 0.5)
    with pytest.raises(ValueError, match="differs"):
        _merge_tensor("ids", a, a + 1, 0.5)
