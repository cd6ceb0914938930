"""Issue "Loading reads exactly the weights the user meant", cases 1, 5, 6, 7 and 8: one source of truth for the
weights, no file from outside a checkpoint, one set of dtype checks for load and merge, one tokenizer for both
sides, and no tokenizer or config file that is not a regular file. Every refusal is a one-line ValueError naming
the file or tensor; the CLI prints it as one line and exits with status 2."""

import json
import os
import shutil
import stat
import threading
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import dami_kernels as dk
from dami_kernels.cli import main
from dami_kernels.hf.checkpoint import open_checkpoint
from dami_kernels.hf.compat import check_pair
from dami_kernels.hf.tokenizer import load_tokenizer
from tiny_pairs import CHARS, CHAT_TEMPLATE, SPECIALS, build_tokenizer, cached_pair, hub_snapshot

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _copy(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def _one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text, text
    return text


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dami "), err
    return err[0]


# ---------------------------------------------------------------- case 1: a weight file and its index together


def _single_beside_index(dst: Path) -> Path:
    """A sharded Instruct side plus a `model.safetensors` holding the Thinking side's tensors: transformers loads
    the single file, the index names other weights."""
    pair = cached_pair("llama", max_shard_size="30KB")
    side = _copy(pair.instruct, dst)
    tensors = {}
    for f in sorted(pair.thinking.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    save_file(tensors, str(side / "model.safetensors"), metadata={"format": "pt"})
    return side


def _pickle_beside_index(dst: Path) -> Path:
    side = _copy(cached_pair("qwen3").instruct, dst)
    tensors = load_file(str(side / "model.safetensors"))
    (side / "model.safetensors").unlink()
    torch.save(tensors, str(side / "pytorch_model.bin"))
    (side / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "pytorch_model.bin" for k in tensors}})
    )
    return side


def test_safetensors_file_and_index_together_refused_everywhere(tmp_path):
    side = _single_beside_index(tmp_path / "i")
    thinking = cached_pair("llama", max_shard_size="30KB").thinking
    with pytest.raises(ValueError, match="model.safetensors.*model.safetensors.index.json") as err:
        open_checkpoint(side)
    assert str(side) in _one_line(err)
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        dk.load_pair(side, thinking, backend="torch", progress=False)
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        dk.load_pair(thinking, side, backend="torch", progress=False)
    with pytest.raises(ValueError, match="model.safetensors.index.json"):
        dk.merge_pair(side, thinking, 0.0, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    (side / "model.safetensors").unlink()  # one source of truth again: loads
    assert "model.embed_tokens.weight" in open_checkpoint(side).specs()


def test_pickle_file_and_index_together_refused(tmp_path):
    side = _pickle_beside_index(tmp_path / "i")
    for allow_pickle in (True, False):
        with pytest.raises(ValueError, match="pytorch_model.bin.*pytorch_model.bin.index.json") as err:
            open_checkpoint(side, allow_pickle=allow_pickle)
        _one_line(err)
    (side / "pytorch_model.bin.index.json").unlink()
    assert open_checkpoint(side, allow_pickle=True).fmt == "pickle"


# ---------------------------------------------------------------- case 5: symlinks out of the checkpoint

SYMLINKED = [
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
]


def _symlink_out(side: Path, name: str, outside: Path) -> Path:
    """side/name becomes a symlink to a file outside (the original content, or a small JSON for a new file)."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    if (side / name).exists():
        shutil.move(str(side / name), str(outside))
    else:
        outside.write_text(json.dumps({}))
    (side / name).symlink_to(outside)
    return outside


@pytest.mark.parametrize("which", ["instruct", "thinking"])
@pytest.mark.parametrize("name", SYMLINKED)
def test_symlink_out_of_the_checkpoint_refused_on_load(tmp_path, name, which):
    pair = cached_pair("qwen3")
    dirs = {"instruct": pair.instruct, "thinking": pair.thinking}
    side = dirs[which] = _copy(dirs[which], tmp_path / which)
    outside = _symlink_out(side, name, tmp_path / "elsewhere" / name)
    for load in (
        lambda: dk.load_pair(dirs["instruct"], dirs["thinking"], backend="torch", progress=False),
        lambda: dk.load_pair_and_tokenizer(dirs["instruct"], dirs["thinking"], backend="torch", progress=False),
        lambda: dk.merge_pair(dirs["instruct"], dirs["thinking"], 0.5, tmp_path / "m", progress=False),
    ):
        with pytest.raises(ValueError, match="points outside the checkpoint directory") as err:
            load()
        assert name in _one_line(err) and str(outside) in str(err.value)
    assert not (tmp_path / "m").exists()
    if name not in ("config.json", "generation_config.json"):
        with pytest.raises(ValueError, match=f"{name}.*points outside"):
            load_tokenizer(side)


def test_tokenizer_json_to_etc_passwd_named_as_a_symlink_out(tmp_path):
    side = _copy(cached_pair("qwen3").instruct, tmp_path / "i")
    (side / "tokenizer.json").unlink()
    (side / "tokenizer.json").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="tokenizer.json.*points outside.*/etc/passwd") as err:
        load_tokenizer(side)
    assert "corrupt" not in _one_line(err)


def test_symlinks_inside_and_hub_snapshot_blobs_still_load(tmp_path):
    pair = cached_pair("qwen3")
    i = _copy(pair.instruct, tmp_path / "i")
    (i / "store").mkdir()
    for name in ("tokenizer.json", "config.json", "chat_template.jinja"):
        shutil.move(str(i / name), str(i / "store" / name))
        (i / name).symlink_to(Path("store") / name)
    model, tok = dk.load_pair_and_tokenizer(i, pair.thinking, backend="torch", progress=False)
    assert tok.chat_template == CHAT_TEMPLATE
    snaps = [
        hub_snapshot(src, tmp_path / f"models--x--{which}")  # hub cache layout: snapshots/REV/* -> blobs/
        for which, src in (("i", pair.instruct), ("t", pair.thinking))
    ]
    model, tok = dk.load_pair_and_tokenizer(*snaps, backend="torch", progress=False)
    assert tok.chat_template == CHAT_TEMPLATE
    assert (dk.merge_pair(*snaps, 0.5, tmp_path / "m", progress=False) / "tokenizer.json").is_file()


# ---------------------------------------------------------------- case 6: one set of dtype checks


@pytest.mark.parametrize("which", ["instruct", "thinking"])
def test_integer_tensor_on_one_side_refused_by_load_as_by_merge(tmp_path, which):
    pair = cached_pair("qwen3")
    dirs = {"instruct": pair.instruct, "thinking": pair.thinking}
    side = dirs[which] = _copy(dirs[which], tmp_path / which)
    tensors = load_file(str(side / "model.safetensors"))
    name = "model.norm.weight"
    tensors[name] = torch.arange(tensors[name].numel(), dtype=torch.int32).reshape(tensors[name].shape)
    save_file(tensors, str(side / "model.safetensors"), metadata={"format": "pt"})
    messages = []
    for run in (
        lambda: check_pair(open_checkpoint(dirs["instruct"]), open_checkpoint(dirs["thinking"])),
        lambda: dk.load_pair(dirs["instruct"], dirs["thinking"], backend="torch", progress=False),
        lambda: dk.merge_pair(dirs["instruct"], dirs["thinking"], 0.5, tmp_path / "m", progress=False),
    ):
        with pytest.raises(ValueError, match=f"{name}.*int32.*never cast") as err:
            run()
        messages.append(_one_line(err))
    assert len(set(messages)) == 1, messages  # the same check, the same words
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- case 7: tokenizers that differ


def _char_tokenizer(chars=CHARS, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """build_tokenizer with another character order, end-of-sequence token or chat template."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(chars))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<|pad|>",
        eos_token=eos_token,
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tok.chat_template = chat_template
    return tok


def _with_tokenizer(src: Path, dst: Path, tok) -> Path:
    side = _copy(src, dst)
    for name in TOKENIZER_FILES:
        if (side / name).exists():
            (side / name).unlink()
    if tok is not None:
        tok.save_pretrained(str(side))
    return side


SWAPPED = ["b", "a"] + CHARS[2:]  # same size, 'a' and 'b' exchanged
A_ID = len(SPECIALS)  # the id of 'a' in the instruct tokenizer


@pytest.mark.parametrize(
    "tok,message",
    [
        (_char_tokenizer(SWAPPED), rf"token id {A_ID} is 'a' in .* but 'b' in "),
        (
            _char_tokenizer(eos_token="<|endoftext|>"),
            r"special token 'eos_token' is '<\|im_end\|>' in .* but "
            r"'<\|endoftext\|>' in ",
        ),
        (_char_tokenizer(chat_template="{{ messages[0]['content'] }}"), "chat templates differ"),
        (None, "cannot load the tokenizer of"),
    ],
    ids=["vocabulary", "special-tokens", "chat-template", "no-tokenizer"],
)
def test_differing_tokenizers_refused_unless_allowed(tmp_path, tok, message):
    pair = cached_pair("qwen3")
    t = _with_tokenizer(pair.thinking, tmp_path / "t", tok)
    if tok is not None:
        assert len(tok) == len(build_tokenizer())
    with pytest.raises(ValueError, match=message) as err:
        load_tokenizer(pair.instruct, t)
    assert "allow_tokenizer_mismatch=True" in _one_line(err)
    with pytest.raises(ValueError, match=message):
        dk.load_pair_and_tokenizer(pair.instruct, t, backend="torch", progress=False)
    with pytest.raises(ValueError, match=message):
        dk.merge_pair(pair.instruct, t, 0.5, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    # the explicit opt-out: a warning, and the instruct tokenizer
    with pytest.warns(UserWarning, match=message):
        got = load_tokenizer(pair.instruct, t, allow_tokenizer_mismatch=True)
    assert got.get_vocab() == build_tokenizer().get_vocab()
    with pytest.warns(UserWarning, match=message):
        model, got = dk.load_pair_and_tokenizer(
            pair.instruct, t, allow_tokenizer_mismatch=True, backend="torch", progress=False
        )
    assert got.chat_template == CHAT_TEMPLATE
    with pytest.warns(UserWarning, match=message):
        out = dk.merge_pair(pair.instruct, t, 0.5, tmp_path / "m", allow_tokenizer_mismatch=True, progress=False)
    assert (out / "tokenizer.json").read_bytes() == (pair.instruct / "tokenizer.json").read_bytes()


def test_equal_tokenizers_load_without_warning():
    pair = cached_pair("qwen3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_tokenizer(pair.instruct, pair.thinking).chat_template == CHAT_TEMPLATE


# ---------------------------------------------------------------- case 8: tokenizer size and non-regular files


def test_tokenizer_larger_than_the_embedding_refused_at_load(tmp_path):
    pair = cached_pair("qwen3")
    tok = build_tokenizer()
    tok.add_tokens([f"<x{k}>" for k in range(60)])
    i = _with_tokenizer(pair.instruct, tmp_path / "i", tok)
    t = _with_tokenizer(pair.thinking, tmp_path / "t", tok)
    with pytest.raises(ValueError, match=rf"{len(tok)} tokens.*100 rows") as err:
        dk.load_pair_and_tokenizer(i, t, backend="torch", progress=False)
    _one_line(err)


def _without_blocking(fn, fifo: Path | None = None, timeout: float = 120.0):
    """fn() in a thread; fails (after unblocking the reader) if it is still waiting on the FIFO after timeout."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets EOF
        th.join(30)
        pytest.fail(f"blocked reading {fifo}")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _make_special(f: Path, kind: str, tmp_path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(f)
    elif kind == "fifo-symlink":
        (f.parent / "pipe").mkdir()
        os.mkfifo(f.parent / "pipe" / "p")
        f.symlink_to(Path("pipe") / "p")
    elif kind == "char-device":
        try:
            os.mknod(f, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers: reads return nothing
        except OSError as err:
            pytest.skip(f"cannot create a character device here ({err})")
    elif kind == "directory":
        f.mkdir()


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json"])
@pytest.mark.parametrize("kind", ["fifo", "fifo-symlink", "char-device", "directory"])
def test_non_regular_tokenizer_or_config_file_refused_before_opening(tmp_path, name, kind):
    pair = cached_pair("qwen3")
    side = _copy(pair.thinking, tmp_path / "t")
    (side / name).unlink()
    _make_special(side / name, kind, tmp_path)
    fifo = side / name if kind.startswith("fifo") else None
    what = "not a regular file"
    with pytest.raises(ValueError, match=f"{name}.*{what}") as err:
        _without_blocking(lambda: dk.load_pair(pair.instruct, side, backend="torch", progress=False), fifo)
    _one_line(err)
    with pytest.raises(ValueError, match=f"{name}.*{what}"):
        _without_blocking(lambda: dk.merge_pair(pair.instruct, side, 0.5, tmp_path / "m", progress=False), fifo)
    if name != "config.json":
        with pytest.raises(ValueError, match=f"{name}.*{what}"):
            _without_blocking(lambda: load_tokenizer(side), fifo)
        with pytest.raises(ValueError, match=f"{name}.*{what}"):
            _without_blocking(lambda: load_tokenizer(pair.instruct, side, allow_tokenizer_mismatch=False), fifo)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_tokenizer_json_symlink_to_a_device_refused_without_reading_it(tmp_path, device):
    side = _copy(cached_pair("qwen3").instruct, tmp_path / "i")
    (side / "tokenizer.json").unlink()
    (side / "tokenizer.json").symlink_to(device)
    with pytest.raises(ValueError, match=f"tokenizer.json.*points outside.*{device}"):
        open_checkpoint(side)  # never opens tokenizer.json, with or without the check
    if device == "/dev/null":  # reading /dev/zero would never end: only the check that never reads is run on it
        with pytest.raises(ValueError, match=f"tokenizer.json.*points outside.*{device}"):
            load_tokenizer(side)


# ---------------------------------------------------------------- the command line: one line, exit status 2


def _case_dirs(case: str, tmp_path: Path) -> tuple[Path, Path]:
    if case == "weights-and-index":
        return _single_beside_index(tmp_path / "i"), cached_pair("llama", max_shard_size="30KB").thinking
    pair = cached_pair("qwen3")
    if case == "symlink-out":
        t = _copy(pair.thinking, tmp_path / "t")
        _symlink_out(t, "chat_template.jinja", tmp_path / "elsewhere" / "chat_template.jinja")
        return pair.instruct, t
    assert case == "tokenizer-vocabulary"
    return pair.instruct, _with_tokenizer(pair.thinking, tmp_path / "t", _char_tokenizer(SWAPPED))


CLI_MESSAGES = {
    "weights-and-index": "model.safetensors.index.json",
    "symlink-out": "chat_template.jinja.*points outside the checkpoint directory",
    "tokenizer-vocabulary": f"token id {A_ID} is 'a' in .*--allow-tokenizer-mismatch",
}


@pytest.mark.parametrize("command", ["merge", "generate"])
@pytest.mark.parametrize("case", list(CLI_MESSAGES))
def test_cli_refuses_with_one_line_and_status_2(tmp_path, capsys, command, case):
    i, t = _case_dirs(case, tmp_path)
    argv = [command, "--instruct", str(i), "--thinking", str(t), "--lam", "0.5"]
    argv += ["--out", str(tmp_path / "m")] if command == "merge" else ["--device", "cpu", "--max-new-tokens", "2", "ab"]
    assert main(argv) == 2
    line = _err_line(capsys)
    assert line.startswith(f"dami {command}: error: ")
    import re

    assert re.search(CLI_MESSAGES[case], line), line
    assert "allow_tokenizer_mismatch" not in line
    assert not (tmp_path / "m").exists()
    if case == "tokenizer-vocabulary":  # the CLI's opt-out
        with pytest.warns(UserWarning, match=f"token id {A_ID}"):
            assert main(argv + ["--allow-tokenizer-mismatch"]) == 0


def _damaged_weights_or_config(case: str, tmp_path: Path) -> tuple[Path, Path]:
    """A pair with a NaN in Thinking's final norm, or with num_hidden_layers 1000000 on both sides."""
    import json

    from safetensors.torch import load_file, save_file

    pair = cached_pair("llama")
    i, t = _copy(pair.instruct, tmp_path / "i"), _copy(pair.thinking, tmp_path / "t")
    if case == "nan-weight":
        sd = load_file(str(t / "model.safetensors"))
        sd["model.norm.weight"].view(-1)[0] = float("nan")
        save_file(sd, str(t / "model.safetensors"), metadata={"format": "pt"})
    else:
        for d in (i, t):
            cfg = json.loads((d / "config.json").read_text())
            cfg["num_hidden_layers"] = 1000000
            (d / "config.json").write_text(json.dumps(cfg))
    return i, t


@pytest.mark.parametrize("case", [*CLI_MESSAGES, "nan-weight", "million-layers"])
def test_merge_generate_and_serve_give_the_same_line(tmp_path, capsys, case):
    """`dami merge`, `dami generate` and `dami serve` print the same error for the same damaged pair (exit 2);
    serve before it listens (a SIGALRM fails the test instead of serving forever). For a NaN weight, merge says
    "refusing to merge it" where the loaders say "refusing to load it": the rest of the line is the same."""
    import signal
    import socket

    if case in CLI_MESSAGES:
        i, t = _case_dirs(case, tmp_path)
    else:
        i, t = _damaged_weights_or_config(case, tmp_path)
    pair = ["--instruct", str(i), "--thinking", str(t)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {
        "merge": ["merge", *pair, "--lam", "0.5", "--out", str(tmp_path / "m")],
        "generate": ["generate", *pair, "--lam", "0.5", "--device", "cpu", "--max-new-tokens", "2", "ab"],
        "serve": ["serve", *pair, "--device", "cpu", "--port", str(port)],
    }
    messages = {}
    capsys.readouterr()  # what building the damaged pair printed
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("dami serve started")))
    signal.alarm(60)
    try:
        for command, argv in runs.items():
            assert main(argv) == 2, command
            lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("dami ")]  # (merge's bar before)
            assert len(lines) == 1, lines
            line = lines[0]
            assert line.startswith(f"dami {command}: error: "), line
            messages[command] = line.split(": error: ", 1)[1]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    merge = (
        messages["merge"]
        .replace("refusing to merge it", "refusing to load it")
        .replace("to merge it anyway", "to load it anyway")
    )
    assert merge == messages["generate"] == messages["serve"], messages


def test_a_symlink_loop_between_the_sides_is_a_value_error(tmp_path):
    """Found by the property test: instruct/x -> thinking/x -> instruct/x raised RuntimeError("Symlink loop")."""
    pair = cached_pair("qwen3")
    i, t = _copy(pair.instruct, tmp_path / "i"), _copy(pair.thinking, tmp_path / "t")
    for a, b in ((i, t), (t, i)):
        (a / "generation_config.json").unlink()
        (a / "generation_config.json").symlink_to(b / "generation_config.json")
    with pytest.raises(ValueError, match="generation_config.json"):
        dk.load_pair_and_tokenizer(i, t, progress=False)
