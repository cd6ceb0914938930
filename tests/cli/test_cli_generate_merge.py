"""`dami generate` and `dami merge`: results, progress and one-line errors."""

import json

import torch

from dami_kernels.cli import main
from numerics import rel_err
from tiny_pairs import cached_pair, load_side, merged_fp64_model


def test_cli_merge(tmp_path, capsys):
    paths = cached_pair("qwen3")
    out = tmp_path / "m"
    argv = [
        "merge",
        "--instruct",
        str(paths.instruct),
        "--thinking",
        str(paths.thinking),
        "--lam",
        "0.25",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "merging" in captured.err  # progress bar on stderr
    ids = torch.randint(4, 70, (2, 5))
    with torch.no_grad():
        got = load_side(out)(ids).logits
        ref = merged_fp64_model(paths.instruct, paths.thinking, 0.25)(ids).logits
    assert rel_err(got, ref) < 1e-5
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dami merge: error:") and "overwrite" in err[-1] and "Traceback" not in "".join(err)
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(argv[:-2] + ["--out", str(tmp_path / "z"), "--lam", "7"]) == 2
    assert "[0, 1]" in capsys.readouterr().err


def test_cli_generate_per_prompt_lambda(capsys):
    paths = cached_pair("qwen3")
    base = [
        "generate",
        "--instruct",
        str(paths.instruct),
        "--thinking",
        str(paths.thinking),
        "--device",
        "cpu",
        "--backend",
        "torch",
        "--max-new-tokens",
        "5",
        "--json",
    ]
    assert main(base + ["--lam", "0", "--lam", "1", "hello", "2+2="]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["lam"] for r in rows] == [0.0, 1.0] and [r["prompt"] for r in rows] == ["hello", "2+2="]
    assert all(1 <= r["num_tokens"] <= 5 for r in rows)
    assert "generating" in captured.err
    assert main(base + ["--lam", "0.5", "a", "b", "c"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_cli_generate_errors(tmp_path, capsys):
    paths = cached_pair("qwen3")
    base = ["generate", "--instruct", str(paths.instruct), "--thinking", str(paths.thinking), "--device", "cpu"]
    assert main(base + ["--lam", "0.1", "--lam", "0.2", "a", "b", "c"]) == 2
    assert "--lam was given 2 times for 3 prompts" in capsys.readouterr().err
    assert main(base + ["--lam", "nan", "a"]) == 2
    assert "finite" in capsys.readouterr().err
    other = [
        "generate",
        "--instruct",
        str(paths.instruct),
        "--thinking",
        str(tmp_path / "missing"),
        "--lam",
        "0.5",
        "a",
    ]
    assert main(other) == 2
    assert "does not exist" in capsys.readouterr().err
