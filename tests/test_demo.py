"""`dami demo` on a small N (report schema; numbers agree with the per-item logs) and
`dami estimate train` on a small train split (files, round trip, falling loss)."""
import contextlib
import io
import json

import pytest

from dami_kernels.cli import main
from dami_kernels.evaluation.runner import read_records

METHOD_KEYS = {"instruct", "thinking", "dami_conf", "dami_pref", "oracle"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(output directory, what the command printed)."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(out), "--n", "16", "--seed", "7", "--quiet"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    return demo_run[0]


def test_demo_prints_its_tables(demo_run):
    from dami_kernels.evaluation.sweep import table_markdown
    from dami_kernels.workflows.demo import methods_markdown, targets_markdown

    out, printed = demo_run
    r = json.loads((out / "report.json").read_text())
    for table in (table_markdown(r["sweep"], r["continuity"]), methods_markdown(r), targets_markdown(r)):
        assert table in printed
    conf = r["methods"]["dami_conf"]
    assert f"| dami_conf | {conf['accuracy']:.3f} | {conf['mean_tokens']:.1f} | {conf['mean_lam']:.2f} |" in printed


def test_demo_report_schema(demo_dir):
    r = json.loads((demo_dir / "report.json").read_text())
    assert r["seed"] == 7 and r["n_problems"] == 16
    assert [row["lam"] for row in r["sweep"]] == pytest.approx([0.1 * i for i in range(11)])
    for row in r["sweep"]:
        assert set(row) >= {"lam", "accuracy", "mean_tokens"}
    assert set(r["methods"]) == METHOD_KEYS
    for name, m in r["methods"].items():
        assert 0.0 <= m["accuracy"] <= 1.0 and m["mean_tokens"] > 0, name
    for name in ("dami_conf", "dami_pref", "oracle"):
        assert 0.0 <= r["methods"][name]["mean_lam"] <= 1.0
    assert set(r["targets"]) == {"dami_conf", "dami_pref"}
    assert (demo_dir / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "DAMI demo" in (demo_dir / "report.md").read_text()


def test_demo_numbers_agree_with_logs(demo_dir):
    r = json.loads((demo_dir / "report.json").read_text())
    sweep = read_records(demo_dir / "sweep_items.jsonl")
    mixed = read_records(demo_dir / "mixed_items.jsonl")
    assert len(sweep) == 16 * 11 and len(mixed) == 2 * 16
    for row in r["sweep"]:
        rows = [x for x in sweep if x.lam == pytest.approx(row["lam"])]
        assert row["accuracy"] == pytest.approx(sum(x.correct for x in rows) / len(rows))
        assert row["mean_tokens"] == pytest.approx(sum(x.tokens for x in rows) / len(rows))
    assert r["methods"]["instruct"]["accuracy"] == r["sweep"][0]["accuracy"]
    assert r["methods"]["thinking"]["mean_tokens"] == r["sweep"][-1]["mean_tokens"]
    for name, part in (("dami_conf", mixed[:16]), ("dami_pref", mixed[16:])):
        m = r["methods"][name]
        assert m["accuracy"] == pytest.approx(sum(x.correct for x in part) / 16)
        assert m["mean_tokens"] == pytest.approx(sum(x.tokens for x in part) / 16)
        assert m["mean_lam"] == pytest.approx(sum(x.lam for x in part) / 16)
    # The oracle picks, per problem, the cheapest correct grid λ of the sweep.
    by_item = {}
    for x in sweep:
        by_item.setdefault(x.id, []).append(x)
    best = []
    for rows in by_item.values():
        ok = [x for x in rows if x.correct] or rows
        best.append(min(ok, key=lambda x: (x.tokens, x.lam)))
    assert r["methods"]["oracle"]["accuracy"] == pytest.approx(sum(x.correct for x in best) / len(best))
    assert r["methods"]["oracle"]["mean_tokens"] == pytest.approx(sum(x.tokens for x in best) / len(best))


def test_estimate_train_and_predict(tmp_path, capsys):
    from dami_kernels.estimators.store import load_estimator

    est = tmp_path / "est"
    assert main(["estimate", "train", "--n", "24", "--grid", "0,0.5,1", "--pref-steps", "30",
                 "--out", str(est)]) == 0
    for name in ("conf.json", "pref/config.json", "pref/head.safetensors", "rollouts.jsonl",
                 "train_report.json", "train_ids.json"):
        assert (est / name).is_file(), name
    report = json.loads((est / "train_report.json").read_text())
    assert report["n_train"] == 24 and report["grid"] == [0.0, 0.5, 1.0]
    assert report["pref"]["loss_last"] < report["pref"]["loss_first"]
    assert report["conf"]["sensitivity"]
    assert load_estimator("conf", est).lam_grid == [0.0, 0.5, 1.0]
    assert load_estimator("pref", est).grid == [0.0, 0.5, 1.0]
    capsys.readouterr()
    assert main(["estimate", "predict", "--method", "pref", "--estimator-dir", str(est), "12+7", "99*9-3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [x["prompt"] for x in lines] == ["12+7", "99*9-3"]
    assert all(x["lam"] in (0.0, 0.5, 1.0) for x in lines)
