"""`dami demo` on a small N (report schema; numbers agree with the per-item logs) and
`dami estimate train` on a small train split (files, round trip, falling loss)."""

import contextlib
import io
import json

import pytest

from dami_kernels.cli import main
from dami_kernels.evaluation.runner import read_records

METHOD_KEYS = {
    "thinking",
    "instruct",
    "dami_conf",
    "dami_pref",
    "oracle",
    "syntax_rule",
    "random_matched",
    "frontier_matched",
    "text_router_conf",
    "text_router_pref",
}


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
    from dami_kernels.workflows.demo_report import methods_markdown, signals_markdown, targets_markdown

    out, printed = demo_run
    r = json.loads((out / "report.json").read_text())
    d = json.loads((out / "details.json").read_text())
    for table in (
        table_markdown(d["sweep_table"], d["continuity"]),
        methods_markdown(r),
        targets_markdown(d),
        signals_markdown(r),
    ):
        assert table in printed
    conf = r["methods"]["dami_conf"]
    assert f"| dami_conf | {conf['accuracy']:.3f} | {conf['mean_tokens']:.1f} | {conf['mean_lambda']:.2f} |" in printed


def test_demo_report_contract(demo_dir):
    """report.json has exactly the documented keys and types."""
    r = json.loads((demo_dir / "report.json").read_text())
    assert set(r) == {"n", "seed", "mix", "margin", "methods", "sweep", "signals_auroc"}
    assert r["n"] == 16 and r["seed"] == 7 and r["mix"] == [1, 1, 1, 1] and r["margin"] == 0.01
    assert [row["lam"] for row in r["sweep"]] == pytest.approx([0.1 * i for i in range(11)])
    for row in r["sweep"]:
        assert set(row) == {"lam", "accuracy", "mean_tokens"}
    assert set(r["methods"]) == METHOD_KEYS
    for name, m in r["methods"].items():
        extra = {"vs_text_router"} if name in ("dami_conf", "dami_pref") else set()
        assert set(m) == {"accuracy", "mean_tokens", "mean_lambda", "vs_thinking"} | extra, name
        assert 0.0 <= m["accuracy"] <= 1.0 and m["mean_tokens"] > 0, name
        assert m["mean_lambda"] is None or 0.0 <= m["mean_lambda"] <= 1.0
        v = m["vs_thinking"]
        assert set(v) == {"diff", "ci95", "mcnemar_p"} and 0.0 <= v["mcnemar_p"] <= 1.0
        assert v["ci95"][0] <= v["diff"] + 1e-12 and v["diff"] <= v["ci95"][1] + 1e-12
        assert v["diff"] == pytest.approx(m["accuracy"] - r["methods"]["thinking"]["accuracy"])
    assert r["methods"]["thinking"]["vs_thinking"] == {"diff": 0.0, "ci95": [0.0, 0.0], "mcnemar_p": 1.0}
    assert set(r["signals_auroc"]) >= {"confidence", "discrepancy", "prompt_length", "text"}
    d = json.loads((demo_dir / "details.json").read_text())
    assert set(d["targets"]) == {"dami_conf", "dami_pref"}
    tr = d["text_router"]
    assert tr["model"] in ("logistic", "gbt") and tr["model"] == min(tr["cv_logloss"], key=tr["cv_logloss"].get)
    for name in ("dami_conf", "dami_pref"):
        v = r["methods"][name]["vs_text_router"]
        router = r["methods"]["text_router_" + name.split("_")[1]]
        assert set(v) == {"diff", "ci95", "mcnemar_p"} and v["ci95"][0] <= v["diff"] + 1e-12 <= v["ci95"][1] + 2e-12
        assert v["diff"] == pytest.approx(r["methods"][name]["accuracy"] - router["accuracy"])
        assert d["targets"][name]["vs_text_router"]["diff"] == pytest.approx(v["diff"])
        assert "met" in d["targets"][name]["vs_text_router"]
    assert (demo_dir / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    md = (demo_dir / "report.md").read_text()
    assert "n = 16" in md and "level mix 1:1:1:1" in md and "margin 0.01" in md and "**dami_pref**" in md
    assert "text_router_conf" in md and "vs text-only router" in md


def test_demo_numbers_agree_with_logs(demo_dir):
    r = json.loads((demo_dir / "report.json").read_text())
    sweep = read_records(demo_dir / "sweep_items.jsonl")
    mixed = [json.loads(line) for line in (demo_dir / "mixed_items.jsonl").read_text().splitlines()]
    assert len(sweep) == 16 * 11 and len(mixed) == 2 * 16
    assert [m["method"] for m in mixed] == ["dami_conf"] * 16 + ["dami_pref"] * 16
    for row in r["sweep"]:
        rows = [x for x in sweep if x.lam == pytest.approx(row["lam"])]
        assert row["accuracy"] == pytest.approx(sum(x.correct for x in rows) / len(rows))
        assert row["mean_tokens"] == pytest.approx(sum(x.tokens for x in rows) / len(rows))
    assert r["methods"]["instruct"]["accuracy"] == r["sweep"][0]["accuracy"]
    assert r["methods"]["thinking"]["mean_tokens"] == r["sweep"][-1]["mean_tokens"]
    for name in ("dami_conf", "dami_pref"):
        part = [m for m in mixed if m["method"] == name]
        m = r["methods"][name]
        assert m["accuracy"] == pytest.approx(sum(x["correct"] for x in part) / 16)
        assert m["mean_tokens"] == pytest.approx(sum(x["tokens"] for x in part) / 16)
        assert m["mean_lambda"] == pytest.approx(sum(x["lam"] for x in part) / 16)
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
    # random_matched deals DAMI-Pref's λ values out again: same mean λ
    assert r["methods"]["random_matched"]["mean_lambda"] == pytest.approx(r["methods"]["dami_pref"]["mean_lambda"])


def test_estimate_train_drops_a_signal(tmp_path, capsys):
    """--drop-signal discrepancy: DAMI-Conf is tuned with w = 0 and DAMI-Pref's features keep only the
    confidence; the report records it. Dropping both signals is a one-line error before anything runs."""
    est = tmp_path / "est"
    assert (
        main(
            [
                "estimate",
                "train",
                "--n",
                "24",
                "--grid",
                "0,0.5,1",
                "--pref-steps",
                "30",
                "--drop-signal",
                "discrepancy",
                "--out",
                str(est),
            ]
        )
        == 0
    )
    report = json.loads((est / "train_report.json").read_text())
    assert report["dropped_signals"] == ["discrepancy"]
    assert json.loads((est / "conf.json").read_text())["w"] == 0.0
    assert {r["w"] for r in report["conf"]["sensitivity"] if r["param"] == "tau"} == {0.0}
    pref = json.loads((est / "pref" / "config.json").read_text())
    assert pref["feature_spec"]["conf_signals"] == ["confidence"]
    capsys.readouterr()
    assert (
        main(
            [
                "estimate",
                "train",
                "--n",
                "24",
                "--drop-signal",
                "discrepancy",
                "--drop-signal",
                "confidence",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "drop_signals must name at most one" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_estimate_train_and_predict(tmp_path, capsys):
    from dami_kernels.estimators.store import load_estimator

    est = tmp_path / "est"
    assert main(["estimate", "train", "--n", "24", "--grid", "0,0.5,1", "--pref-steps", "30", "--out", str(est)]) == 0
    for name in (
        "conf.json",
        "pref/config.json",
        "pref/head.safetensors",
        "rollouts.jsonl",
        "train_report.json",
        "train_ids.json",
        "train_prompts.json",
    ):
        assert (est / name).is_file(), name
    report = json.loads((est / "train_report.json").read_text())
    assert report["n_train"] == 24 and report["grid"] == [0.0, 0.5, 1.0]
    assert report["pref"]["loss_last"] < report["pref"]["loss_first"]
    assert report["conf"]["sensitivity"]
    assert load_estimator("conf", est).lam_grid == [0.0, 0.5, 1.0]
    # the shipped testbed pair's Thinking model answers directly in its non-thinking mode: no think prefix
    assert load_estimator("conf", est).think_prefix == ""
    assert load_estimator("pref", est).feature_spec["think_prefix"] == ""
    assert load_estimator("pref", est).grid == [0.0, 0.5, 1.0]
    capsys.readouterr()
    assert main(["estimate", "predict", "--method", "pref", "--estimator-dir", str(est), "12+7", "99*9-3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [x["prompt"] for x in lines] == ["12+7", "99*9-3"]
    assert all(x["lam"] in (0.0, 0.5, 1.0) for x in lines)
