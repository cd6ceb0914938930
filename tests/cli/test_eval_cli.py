"""`dami eval` and `dami sweep` on the shipped testbed pair with a small N: the summaries agree with the
per-item logs, the logs agree with the grader, and the printed tables hold the summaries' numbers."""

import json
import math

import pytest

from dami_kernels.cli import main
from dami_kernels.evaluation import grade
from dami_kernels.evaluation.runner import read_records
from dami_kernels.evaluation.sweep import table_markdown
from dami_kernels.evaluation.tables import summary_markdown


def check_log_and_summary(items_path, summary):
    records = read_records(items_path)
    assert len(records) == summary["n"]
    assert summary["accuracy"] == pytest.approx(sum(r.correct for r in records) / len(records))
    assert summary["mean_tokens"] == pytest.approx(sum(r.tokens for r in records) / len(records))
    for r in records:
        assert (r.pred, r.correct) == grade(r.output, r.answer)  # testbed answers: the exact grader
        assert r.tokens >= 1
    return records


def test_eval_fixed_lambda(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--n", "10", "--seed", "3", "--lam", "0.3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert summary_markdown(summary) in printed
    assert f"| {summary['n']} | {summary['accuracy']:.3f} | {summary['mean_tokens']:.1f} | 0.300 |" in printed
    records = check_log_and_summary(out / "items.jsonl", summary)
    assert {r.lam for r in records} == {0.3}
    assert (summary["n"], summary["seed"], summary["mix"], summary["split"]) == (10, 3, [1, 1, 1, 1], "test")
    assert summary["estimator"] is None
    assert summary["tokens_per_s"] > 0 and math.isfinite(summary["tokens_per_s"])


def test_eval_with_estimator_and_data_file(tmp_path):
    from dami_kernels.evaluation import write_items
    from dami_kernels.testbed import eval_items, make_problems

    data = tmp_path / "items.jsonl"
    write_items(data, eval_items(make_problems(8, seed=11)))
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--estimator", "conf", "--out", str(out), "--max-new-tokens", "64"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = check_log_and_summary(out / "items.jsonl", summary)
    assert all(0.0 <= r.lam <= 1.0 for r in records)
    assert summary["mean_lam"] == pytest.approx(sum(r.lam for r in records) / len(records))
    assert summary["data"] == str(data) and summary["estimator"] == "conf" and summary["estimator_dir"]


def test_eval_compare_writes_the_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["eval", "--compare", "--n", "12", "--seed", "5", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["n"] == 12 and r["seed"] == 5 and r["mix"] == [1, 1, 1, 1]
    assert {"syntax_rule", "random_matched", "frontier_matched", "oracle"} <= set(r["methods"])
    printed = capsys.readouterr().out
    assert "McNemar p" in printed and "frontier_matched" in printed


def test_sweep_table_matches_log(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--n", "8", "--seed", "4", "--grid", "0,0.5,1", "--out", str(out)]) == 0
    result = json.loads((out / "sweep.json").read_text())
    printed = capsys.readouterr().out
    assert table_markdown(result["table"], result["continuity"]) in printed
    half = next(row for row in result["table"] if row["lam"] == 0.5)
    assert f"| 0.5 | {half['accuracy']:.3f} | {half['mean_tokens']:.1f} |" in printed
    records = read_records(out / "sweep_items.jsonl")
    assert [row["lam"] for row in result["table"]] == [0.0, 0.5, 1.0]
    for row in result["table"]:
        rows = [r for r in records if r.lam == row["lam"]]
        assert len(rows) == row["n"] == 8
        assert row["accuracy"] == pytest.approx(sum(r.correct for r in rows) / 8)
        assert row["mean_tokens"] == pytest.approx(sum(r.tokens for r in rows) / 8)
    cont = {row["lam"]: row for row in result["continuity"]}
    assert cont[0.0]["cka_instruct"] == pytest.approx(1.0, abs=1e-6) and cont[0.0]["position"] == pytest.approx(0.0)
    assert cont[1.0]["cka_thinking"] == pytest.approx(1.0, abs=1e-6) and cont[1.0]["position"] == pytest.approx(1.0)
    assert 0.0 < cont[0.5]["position"] < 1.0
    assert result["n"] == 8 and result["grid"] == [0.0, 0.5, 1.0]
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 0.5 |" in (out / "sweep.md").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--n", "4", "--lam", "0.3", "--out", "X", "--instruct", "only-one"], "give both --instruct"),
        (["eval", "--n", "0", "--lam", "0.3", "--out", "X"], "--n must be a positive integer"),
        (["sweep", "--n", "4", "--grid", "0,a", "--out", "X"], "--grid"),
        (["eval", "--data", "/nonexistent.jsonl", "--lam", "0.3", "--out", "X"], "nonexistent"),
        (["eval", "--n", "4", "--estimator", "pref", "--estimator-dir", "/nonexistent", "--out", "X"], "not found"),
    ],
)
def test_user_mistakes_print_one_line(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / "o") if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_dir_with_files_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--n", "4", "--grid", "0,1", "--out", str(out)]
    assert main(argv) == 0
    before = (out / "sweep.json").read_text()
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == before  # nothing written by the refused run
    assert main(argv + ["--overwrite"]) == 0
