"""The `dami` model for lm-evaluation-harness, on the shipped testbed pair and a local task over testbed
problems: lm-eval's exact match equals `dami eval`'s accuracy item by item (greedy, same λ), and
loglikelihood scores each request of a mixed-λ batch at its own λ."""

import glob
import importlib.metadata
import json

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from dami_kernels import testbed
from dami_kernels.cli import main
from dami_kernels.evaluation import write_items
from dami_kernels.evaluation.runner import read_records
from dami_kernels.generation import generate
from dami_kernels.integrations.lm_eval import DamiAnswerFilter, DamiLM, lambda_spec
from dami_kernels.pair import lambda_scope
from dami_kernels.testbed import heldout_sample

pytestmark = pytest.mark.slow  # lm-evaluation-harness end to end

N_ITEMS = 24
TASK = "dami_testbed"
TASK_YAML = """task: dami_testbed
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: 64
filter_list:
  - name: dami
    filter:
      - function: dami_answer
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A task YAML and its JSONL data (held-out testbed problems) in one directory."""
    d = tmp_path_factory.mktemp("lm_eval_task")
    write_items(d / "data.jsonl", heldout_sample(N_ITEMS, seed=7))
    (d / f"{TASK}.yaml").write_text(TASK_YAML.format(data=d / "data.jsonl", cache=d / "datasets_cache"))
    return d


def pair_args(lam) -> str:
    instruct, thinking = testbed.testbed_dirs()
    return f"instruct={instruct},thinking={thinking},lam={lam}"


def dami_eval(task_dir, tmp_path, how: list[str]) -> tuple[dict, dict]:
    """`dami eval` on the task's data: (summary, {item id: record})."""
    out = tmp_path / "dami_eval"
    assert main(["eval", "--data", str(task_dir / "data.jsonl"), *how, "--out", str(out)]) == 0
    records = {r.id: r for r in read_records(out / "items.jsonl")}
    return json.loads((out / "summary.json").read_text()), records


def check_same_as_dami_eval(accuracy, samples, summary, records):
    assert len(samples) == len(records) == N_ITEMS
    assert accuracy == pytest.approx(summary["accuracy"], abs=1e-12)
    for s in samples:
        rec = records[s["doc"]["id"]]
        assert s["resps"][0][0] == rec.output  # the same generation, item by item
        assert (s["filtered_resps"][0] == rec.answer) == rec.correct


@pytest.mark.parametrize("lam", [0, 1])
def test_fixed_lambda_exact_match_equals_dami_eval(lam, task_dir, tmp_path):
    res = simple_evaluate(
        model="dami",
        model_args=pair_args(lam),
        tasks=[TASK],
        apply_chat_template=True,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=8,
        device="cpu",
        log_samples=True,
    )
    summary, records = dami_eval(task_dir, tmp_path, ["--lam", str(lam)])
    assert {r.lam for r in records.values()} == {float(lam)}
    check_same_as_dami_eval(res["results"][TASK]["exact_match,dami"], res["samples"][TASK], summary, records)


def test_dami_lm_eval_command_with_conf_equals_dami_eval(task_dir, tmp_path):
    """`dami lm-eval` (lm-eval's own command line) with λ(q) from DAMI-Conf, all requests in one batch."""
    out = tmp_path / "lm_eval_out"
    assert (
        main(
            [
                "lm-eval",
                "--model",
                "dami",
                "--model_args",
                pair_args("conf"),
                "--tasks",
                TASK,
                "--include_path",
                str(task_dir),
                "--apply_chat_template",
                "--device",
                "cpu",
                "--batch_size",
                str(N_ITEMS),
                "--output_path",
                str(out),
                "--log_samples",
            ]
        )
        == 0
    )
    results = json.loads(open(glob.glob(f"{out}/**/results_*.json", recursive=True)[0]).read())
    samples = [json.loads(line) for line in open(glob.glob(f"{out}/**/samples_{TASK}_*.jsonl", recursive=True)[0])]
    summary, records = dami_eval(task_dir, tmp_path, ["--estimator", "conf"])
    assert len({r.lam for r in records.values()}) >= 2  # the batch really mixes λ values
    check_same_as_dami_eval(results["results"][TASK]["exact_match,dami"], samples, summary, records)


def test_loglikelihood_scores_each_request_at_its_own_lambda():
    # DAMI-Pref: on the shipped pair it picks two λ (0.9 and 1) for these 8 items; the asserts below
    # check that the batch really mixes them
    lm = DamiLM(*testbed.testbed_dirs(), lam="pref", device="cpu", batch_size=16)
    items = heldout_sample(8, seed=3)
    contexts = [lm.apply_chat_template([{"role": "user", "content": it.prompt}]) for it in items]
    wrong = [str(int(it.answer) + 1) for it in items]
    requests = [
        Instance("loglikelihood", {}, (ctx, cont), i)
        for i, (ctx, cont) in enumerate(
            (c, a) for c, it, w in zip(contexts, items, wrong, strict=True) for a in (it.answer, w)
        )
    ]
    got = lm.loglikelihood(requests)
    assert len(set(lm.request_lambdas.values())) >= 2  # one batch of 16 rows with mixed λ
    for req, (logp, greedy) in zip(requests, got, strict=True):
        ctx, cont = req.args
        ctx_ids = lm.tok_encode(ctx)
        ids = lm.tok_encode(ctx + cont)
        with torch.no_grad(), lambda_scope(lm.model, lm.request_lambdas[ctx]):
            logits = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        targets = torch.tensor(ids[len(ctx_ids) :])
        scored = logits[len(ctx_ids) - 1 : -1]
        assert logp == pytest.approx(scored.gather(1, targets[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((scored.argmax(-1) == targets).all())


def test_task_generation_length_beats_the_checkpoint_default():
    """The testbed's generation config says max_new_tokens=96; lm-eval's max_gen_toks must win."""
    lm = DamiLM(*testbed.testbed_dirs(), lam=1, device="cpu")
    ctx = lm.apply_chat_template([{"role": "user", "content": "38471+51628"}])
    full, short = lm.generate_until(
        [Instance("generate_until", {}, (ctx, {"until": [], "max_gen_toks": n}), 0) for n in (64, 5)]
    )
    reference = generate(lm.model, lm.tokenizer, ["38471+51628"], 1.0, max_new_tokens=64, progress=False)[0]
    assert full == reference.text and reference.num_tokens > 10
    assert len(lm.tok_encode(short)) == 5 and full.startswith(short)


def test_raw_prompts_that_start_with_bos_get_no_second_bos():
    """The estimators see lm-eval's chat-formatted contexts as raw text: a BOS already there stays single."""
    from dami_kernels.hf.prompts import encode_prompts

    class BosTokenizer:  # adds BOS like Llama's tokenizer; one id per character
        bos_token, chat_template = "<s>", None

        def __call__(self, text, add_special_tokens=True):
            body = [1] if text.startswith("<s>") else []
            body += [ord(c) for c in text.removeprefix("<s>")]
            return {"input_ids": ([1] if add_special_tokens else []) + body}

    assert encode_prompts(BosTokenizer(), ["<s>ab", "ab"], chat_template=False) == [[1, 97, 98], [1, 97, 98]]


def test_model_args_errors():
    instruct, thinking = testbed.testbed_dirs()
    with pytest.raises(ValueError, match="instruct=DIR,thinking=DIR"):
        DamiLM(instruct=instruct)
    with pytest.raises(ValueError, match="estimator_dir= goes with"):
        DamiLM(instruct, thinking, lam=0.5, estimator_dir="x")
    with pytest.raises(ValueError, match="does not take model_args \\['peft'\\]"):
        DamiLM(instruct, thinking, lam=0, device="cpu", peft="adapter")
    lm = DamiLM(instruct, thinking, lam="pref", device="cpu")
    with pytest.raises(ValueError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("12+34",), 0)])


@pytest.mark.parametrize("value,expected", [(0, 0.0), ("0.25", 0.25), (1.0, 1.0), ("CONF", "conf"), ("pref", "pref")])
def test_lambda_spec(value, expected):
    assert lambda_spec(value) == expected


@pytest.mark.parametrize("value", ["half", float("nan"), True, None])
def test_lambda_spec_rejects(value):
    with pytest.raises(ValueError, match="lam must be"):
        lambda_spec(value)


def test_answer_filter_extracts_like_dami_eval():
    resps = [["<think>12+34=46\n</think>46"], ["046"], ["<think>12+34=46\n"], ["no number"]]
    assert DamiAnswerFilter().apply(resps, [{}] * 4) == [["46"], ["46"], [""], [""]]


def test_plugin_entry_points_name_the_model_and_filter():
    eps = {
        (ep.group, ep.name): ep
        for group in ("lm_eval.models", "lm_eval.filters")
        for ep in importlib.metadata.entry_points(group=group)
    }
    assert eps[("lm_eval.models", "dami")].load() is DamiLM
    assert eps[("lm_eval.filters", "dami_answer")].load() is DamiAnswerFilter
