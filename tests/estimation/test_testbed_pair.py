"""The shipped testbed pair through `load_pair`: at λ=0 and λ=1 it reproduces its own endpoint
checkpoints (logits and greedy generations); a mixed batch equals separate runs."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import dami_kernels as dk
from dami_kernels import testbed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair():
    instruct, thinking = testbed.testbed_dirs()
    model, tok = dk.load_pair_and_tokenizer(instruct, thinking, dtype=torch.float32, device="cpu")
    plain = {
        lam: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        for lam, d in ((0.0, instruct), (1.0, thinking))
    }
    return model, tok, plain


def encode(tok, prompts):
    from dami_kernels.hf.prompts import encode_prompts, left_pad, position_ids

    ids, mask = left_pad(encode_prompts(tok, prompts), tok.pad_token_id)
    return ids, mask, position_ids(mask)


def test_endpoints_reproduce_checkpoints(pair):
    model, tok, plain = pair
    prompts = [it.prompt for it in testbed.heldout_sample(12, seed=2)]
    ids, mask, pos = encode(tok, prompts)
    for lam, ref_model in plain.items():
        with torch.no_grad(), dk.lambda_scope(model, lam):
            got = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        ref = ref_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), f"λ={lam}"
        res = dk.generate(model, tok, prompts, lam, max_new_tokens=64, do_sample=False, progress=False)
        out = ref_model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id
        )
        want = [tok.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]
        assert [r.text for r in res] == want, f"λ={lam}"


def test_mixed_batch_equals_separate_runs(pair):
    model, tok, _ = pair
    prompts = [it.prompt for it in testbed.heldout_sample(9, seed=5)]
    lams = [0.0, 0.5, 1.0] * 3
    mixed = dk.generate(model, tok, prompts, lams, max_new_tokens=64, do_sample=False, progress=False)
    for lam in (0.0, 0.5, 1.0):
        idx = [i for i, v in enumerate(lams) if v == lam]
        alone = dk.generate(
            model, tok, [prompts[i] for i in idx], lam, max_new_tokens=64, do_sample=False, progress=False
        )
        assert [mixed[i].text for i in idx] == [r.text for r in alone]
    assert any("</think>" in r.text for r in mixed if r.lam == 1.0)
    assert all("<think>" not in r.text for r in mixed if r.lam == 0.0)


def test_generate_warns_once_naming_characters_outside_the_alphabet(pair):
    """The testbed tokenizer maps anything outside its small alphabet to <|unk|>: dk.generate says so, once
    per call, naming the characters; a prompt within the alphabet does not warn."""
    import warnings

    model, tok, _ = pair
    with pytest.warns(UserWarning, match="does not know") as record:
        dk.generate(model, tok, ["12+3€x", "1x+2"], 0.5, max_new_tokens=2, progress=False)
    unk = [w for w in record if "does not know" in str(w.message)]
    assert len(unk) == 1
    message = str(unk[0].message)
    assert "'€', 'x'" in message and "<|unk|>" in message
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dk.generate(model, tok, ["12+34", "5-6"], [0.0, 1.0], max_new_tokens=2, progress=False)
    assert not [w for w in record if "does not know" in str(w.message)]
