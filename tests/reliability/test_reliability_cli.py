"""Issue 12, items 5, 12, 13: the command line answers mistakes with one line naming the file or flag (exit
status 2), names CLI flags rather than Python keywords, and prints λ as the user typed it. "A newcomer's
first hour": every argument is checked before the pair loads, and `dami lm-eval` names model_args."""

import json
import shutil

import pytest
import torch

from dami_kernels.cli import main
from dami_kernels.hf.device import resolve_device
from tiny_pairs import cached_pair


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("dami ")]) == 1, err
    return [line for line in err if line.startswith("dami ")][0]


def _pair_args():
    p = cached_pair("qwen3")
    return ["--instruct", str(p.instruct), "--thinking", str(p.thinking)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")
@pytest.mark.parametrize(
    "device,message",
    [
        ("cuda", "--device 'cuda': no cuda device is available"),
        ("cuda:3", "--device 'cuda:3': no cuda device is available"),
        ("tpu", "--device 'tpu' is not a device torch knows"),
        ("gpu0", "--device 'gpu0' is not a device torch knows"),
    ],
)
def test_bad_device_is_one_line(capsys, device, message):
    assert main(["generate", *_pair_args(), "--lam", "0.5", "--device", device, "hi"]) == 2
    assert message in _err_line(capsys)


def test_resolve_device_api():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="^device 'tpu' is not a device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="meta device holds no weights"):
        resolve_device("meta")
    with pytest.raises(ValueError, match="device must be a device string"):
        resolve_device(1.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device 'cuda': no cuda device"):
            resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="only .* cuda device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_merge_lam_shown_as_typed(tmp_path, capsys):
    args = ["merge", *_pair_args(), "--lam", "-0.2", "--out", str(tmp_path / "m")]
    assert main(args) == 2
    line = _err_line(capsys)
    assert "--lam -0.2 lies outside [0, 1]; pass --allow-extrapolation" in line and "0.2000000" not in line
    assert main(args + ["--allow-extrapolation"]) == 0
    out = capsys.readouterr().out
    assert "(λ=-0.2)" in out and "0.2000000" not in out


def test_messages_name_cli_flags(tmp_path, capsys):
    p = cached_pair("qwen3")
    pickled = {}
    for side in ("instruct", "thinking"):
        d = shutil.copytree(getattr(p, side), tmp_path / side)
        from safetensors.torch import load_file

        torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
        (d / "model.safetensors").unlink()
        pickled[side] = str(d)
    argv = [
        "merge",
        "--instruct",
        pickled["instruct"],
        "--thinking",
        pickled["thinking"],
        "--lam",
        "0.5",
        "--out",
        str(tmp_path / "m"),
    ]
    assert main(argv) == 2
    line = _err_line(capsys)
    assert "--allow-pickle" in line and "allow_pickle=True" not in line
    assert main(argv + ["--allow-pickle"]) == 0
    capsys.readouterr()
    assert main(argv + ["--allow-pickle"]) == 2  # exists
    line = _err_line(capsys)
    assert "pass --overwrite" in line and "overwrite=True" not in line
    assert main(["generate", *_pair_args(), "--lam", "1.5", "hi"]) == 2
    line = _err_line(capsys)
    assert "--lam 1.5 lies outside [0, 1]; pass --allow-extrapolation" in line


def test_damaged_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    d = shutil.copytree(cached_pair("qwen3").instruct, tmp_path / "i")
    (d / "config.json").write_text('{"model_type": "qwen3", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert (
        main(["merge", "--instruct", str(d), "--thinking", str(d), "--lam", "0.5", "--out", str(tmp_path / "m")]) == 2
    )
    assert f"{d / 'config.json'}: the config is nested too deeply" in _err_line(capsys)


def test_generate_json_records_lambda_as_typed(capsys):
    assert (
        main(
            [
                "generate",
                *_pair_args(),
                "--lam",
                "0.2",
                "--lam",
                "0.7",
                "--max-new-tokens",
                "2",
                "--json",
                "--device",
                "cpu",
                "ab",
                "cd",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["lam"] for r in rows] == [0.2, 0.7]


def test_sweep_out_follows_the_output_rules(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub").mkdir()
    argv = ["sweep", "--n", "2", "--grid", "0,1", "--max-new-tokens", "2", "--out", str(mine)]
    assert main(argv) == 2
    assert "exists; pass --overwrite" in _err_line(capsys)
    assert main(argv + ["--overwrite"]) == 2  # not a directory dami wrote: refused, nothing deleted
    assert "did not write" in _err_line(capsys)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "sub").is_dir()
    inst = cached_pair("qwen3").instruct
    assert main(["sweep", *_pair_args(), "--n", "2", "--out", str(inst / "results")]) == 2
    assert "lies inside the input" in _err_line(capsys)


class Loaded(Exception):
    """Raised by the `no_loading` fixture's stand-ins: the command reached a model load."""


def refuse(*args, **kwargs):
    raise Loaded


@pytest.fixture
def no_loading(monkeypatch):
    """Every way a subcommand loads a pair (load_from_args, merge_pair, load_pair) raises Loaded instead."""
    import dami_kernels.pair

    for module in ("common", "sweep", "eval", "generate", "estimate"):
        monkeypatch.setattr(f"dami_kernels.cli.{module}.load_from_args", refuse)
    monkeypatch.setattr(dami_kernels.pair, "merge_pair", refuse)
    monkeypatch.setattr(dami_kernels.pair, "load_pair", refuse)
    monkeypatch.setattr(dami_kernels.pair, "load_pair_and_tokenizer", refuse)


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["sweep", "--n", "2", "--grid", "0,1.5"],
            "dami sweep: error: --grid 0,1.5: 1.5 lies outside [0, 1]; pass --allow-extrapolation to accept it",
        ),
        (
            ["sweep", "--n", "2", "--grid", "0:1.5:0.5"],
            "dami sweep: error: --grid 0:1.5:0.5: 1.5 lies outside [0, 1]; pass --allow-extrapolation to accept it",
        ),
        (["sweep", "--n", "2", "--grid", "0,nan"], "dami sweep: error: --grid 0,nan: nan is not a finite λ"),
        (
            ["sweep", "--n", "2", "--grid", "1:0:0.1"],
            "dami sweep: error: --grid 1:0:0.1: no λ values (stop lies below start)",
        ),
        (
            ["estimate", "train", "--n", "2", "--grid", "0,1.5"],
            "dami estimate: error: --grid 0,1.5: 1.5 lies outside [0, 1]; pass --allow-extrapolation to accept it",
        ),
        (
            ["eval", "--n", "2", "--lam", "1.5"],
            "dami eval: error: --lam 1.5 lies outside [0, 1]; pass --allow-extrapolation to accept it",
        ),
        (
            ["eval", "--n", "2", "--lam", "0.5", "--estimator-dir", "x"],
            "dami eval: error: --estimator-dir needs --estimator conf|pref or --compare",
        ),
        (
            ["eval", "--n", "2", "--compare", "--estimator-dir", "/nonexistent"],
            "dami eval: error: estimator directory not found: /nonexistent",
        ),
        (
            ["generate", "--lam", "0.5", "--batch-size", "0", "hi"],
            "dami generate: error: --batch-size must be a positive integer, got 0",
        ),
        (
            ["generate", "--lam", "0.5", "--do-sample", "--temperature", "0", "hi"],
            "dami generate: error: --temperature must be a positive number, got 0.0",
        ),
        (
            ["generate", "--lam", "0.5", "--do-sample", "--top-p", "1.5", "hi"],
            "dami generate: error: --top-p must lie in (0, 1], got 1.5",
        ),
    ],
)
def test_arguments_are_checked_before_the_pair_loads(argv, message, no_loading, tmp_path, capsys):
    if argv[0] == "generate":
        argv = [argv[0], *_pair_args(), *argv[1:]]
    if argv[0] in ("sweep", "eval") or argv[:2] == ["estimate", "train"]:
        argv = argv + ["--out", str(tmp_path / "o")]
    capsys.readouterr()  # the test pair's build
    assert main(argv) == 2  # not Loaded
    assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "o").exists()


def test_grid_outside_0_1_with_allow_extrapolation_goes_on_to_load(no_loading, tmp_path):
    with pytest.raises(Loaded):
        main(["sweep", "--n", "2", "--grid", "0,1.5", "--allow-extrapolation", "--out", str(tmp_path / "o")])


@pytest.fixture
def lm_eval_task(tmp_path):
    """A local generate_until task (its data file never exists: the model fails before any task loads)."""
    pytest.importorskip("lm_eval")
    (tmp_path / "dami_probe.yaml").write_text(
        "task: dami_probe\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'missing.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: exact_match\n'
    )
    return tmp_path


@pytest.mark.parametrize(
    "model_args,message",
    [
        (
            "instruct=/nonexistent,thinking=/nonexistent",
            "dami lm-eval: error: model_args instruct=/nonexistent: no such checkpoint directory",
        ),
        (
            "{pair},lam=1.5",
            "dami lm-eval: error: model_args lam=1.5 lies outside [0, 1]; add allow_extrapolation=true to --model_args "
            "to accept it",
        ),
    ],
)
@pytest.mark.slow
def test_lm_eval_model_args_mistakes_are_one_line(model_args, message, lm_eval_task, no_loading, monkeypatch, capsys):
    """lm-eval's own command line: the model's mistakes are one line naming the model_arg (never a dami
    flag such as --allow-extrapolation), before anything loads."""
    from lm_eval.models.huggingface import HFLM

    from dami_kernels import testbed

    monkeypatch.setattr(HFLM, "__init__", refuse)  # HFLM's start: tokenizer, config, then the weights
    monkeypatch.setenv("LMEVAL_LOG_LEVEL", "ERROR")  # lm-eval's INFO lines
    instruct, thinking = testbed.testbed_dirs()
    model_args = model_args.format(pair=f"instruct={instruct},thinking={thinking}")
    assert (
        main(
            [
                "lm-eval",
                "--model",
                "dami",
                "--model_args",
                model_args,
                "--tasks",
                "dami_probe",
                "--include_path",
                str(lm_eval_task),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == message + "\n"
