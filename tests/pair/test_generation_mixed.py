"""λ through HF generate (greedy, sampling, beams, num_return_sequences, left padding) and dk.generate."""

import pytest
import torch

import dami_kernels as dk
from dami_kernels.generation import count_generated
from dami_kernels.pair import generation_expand_size, lambda_state
from tiny_pairs import EOS_ID, PAD_ID, cached_pair, merged_fp64_model

LAMS = [0.0, 0.4, 1.0]


@pytest.fixture(scope="module")
def pair():
    paths = cached_pair("qwen3")
    model, tok = dk.load_pair_and_tokenizer(paths.instruct, paths.thinking, backend="torch", progress=False)
    return paths, model, tok


def _gen(model, ids, mask=None, **kw):
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("do_sample", False)
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, pad_token_id=PAD_ID, eos_token_id=None, **kw)


def _separate(model, ids, lam, mask=None, **kw):
    with dk.lambda_scope(model, lam):
        return _gen(model, ids, mask, **kw)


@pytest.mark.parametrize("sampling", [False, True])
def test_mixed_greedy_equals_separate_runs(pair, sampling):
    paths, model, _ = pair
    ids = torch.randint(4, 70, (6, 5))
    lam_rows = torch.tensor([LAMS[r % 3] for r in range(6)])
    kw = dict(do_sample=True, top_k=1) if sampling else {}  # top_k=1 sampling is deterministic
    with dk.lambda_scope(model, lam_rows):
        mixed = _gen(model, ids, **kw)
    distinct = set()
    for k, lam in enumerate(LAMS):
        sep = _separate(model, ids[k::3], lam, **kw)
        assert torch.equal(mixed[k::3], sep)
        distinct.add(tuple(sep[0, 5:].tolist()))
    assert len(distinct) > 1  # the λ values lead to different continuations
    # and the λ=0.4 rows equal a plain model merged in fp64
    ref = _gen(merged_fp64_model(paths.instruct, paths.thinking, 0.4), ids[1::3], **kw)
    assert torch.equal(mixed[1::3], ref)


def test_beams_and_return_sequences_need_and_get_expanded_lambda(pair):
    _, model, _ = pair
    ids = torch.randint(4, 70, (3, 5))
    lam = torch.tensor(LAMS)
    kw = dict(num_beams=3, num_return_sequences=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="3 values.*9 rows"):
        with dk.lambda_scope(model, lam):
            _gen(model, ids, **kw)
    with dk.lambda_scope(model, lam, expand=3):
        mixed = _gen(model, ids, **kw)
    assert mixed.shape[0] == 6
    for k, value in enumerate(LAMS):
        sep = _separate(model, ids[k : k + 1], value, **kw)
        assert torch.equal(mixed[2 * k : 2 * k + 2], sep)


def test_sampling_num_return_sequences(pair):
    _, model, _ = pair
    ids = torch.randint(4, 70, (2, 5))
    torch.manual_seed(1)
    with dk.lambda_scope(model, torch.tensor([0.2, 0.9]), expand=3):
        out = _gen(model, ids, do_sample=True, num_return_sequences=3)
    assert out.shape == (6, 11)
    assert torch.equal(out[:3, :5], ids[:1].expand(3, 5)) and torch.equal(out[3:, :5], ids[1:].expand(3, 5))


def test_left_padded_mixed_batch_equals_unpadded_single_runs(pair):
    _, model, _ = pair
    lengths = [3, 7, 5]
    width = max(lengths)
    ids = torch.full((3, width), PAD_ID)
    mask = torch.zeros(3, width, dtype=torch.long)
    rows = [torch.randint(4, 70, (n,)) for n in lengths]
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    with dk.lambda_scope(model, torch.tensor(LAMS)):
        mixed = _gen(model, ids, mask)
    for i, r in enumerate(rows):
        sep = _separate(model, r[None], LAMS[i])
        assert torch.equal(mixed[i, width:], sep[0, len(r) :])


def test_generate_api_mixed_lambda_and_token_counts(pair):
    _, model, tok = pair
    prompts = ["hello there", "what is 2+2?", "x", "abc def", "q"]
    lams = [0.0, 0.5, 1.0, 0.5, 0.0]
    res = dk.generate(model, tok, prompts, lams, max_new_tokens=6, batch_size=2, progress=False, eos_token_id=None)
    assert [r.prompt_index for r in res] == list(range(5)) and [r.lam for r in res] == lams
    assert all(r.num_tokens == 6 for r in res)
    # each prompt alone, same λ, through the chat template, gives the same tokens
    for i in (1, 2):
        alone = dk.generate(model, tok, prompts[i], lams[i], max_new_tokens=6, progress=False, eos_token_id=None)
        assert alone[0].token_ids == res[i].token_ids
        assert alone[0].text == tok.decode(res[i].token_ids, skip_special_tokens=True)
    # stop at an EOS that greedy decoding produces: counted once, nothing after it
    stop = res[0].token_ids[2]
    first = res[0].token_ids.index(stop)
    res_eos = dk.generate(model, tok, prompts[:1], 0.0, max_new_tokens=6, progress=False, eos_token_id=stop)
    assert res_eos[0].num_tokens == first + 1 and res_eos[0].token_ids == res[0].token_ids[: first + 1]


def test_generate_api_beams_return_sequences_and_template_switch(pair):
    _, model, tok = pair
    res = dk.generate(
        model, tok, ["ab", "cd"], [0.2, 0.8], max_new_tokens=4, num_beams=2, num_return_sequences=2, progress=False
    )
    assert [(r.prompt_index, r.sequence_index) for r in res] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert lambda_state(model).get() == 0.0  # λ restored after generate
    for switch in (False, None):
        res = dk.generate(
            model, tok, ["ab"], 0.2, max_new_tokens=4, chat_template=switch, progress=False, eos_token_id=None
        )
        if switch is False:
            prompt_ids = tok("ab")["input_ids"]
        else:
            text = tok.apply_chat_template(
                [{"role": "user", "content": "ab"}], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        manual = _separate(model, torch.tensor([prompt_ids]), 0.2, max_new_tokens=4)
        assert res[0].token_ids == manual[0, len(prompt_ids) :].tolist()
    tok_plain = type(tok).from_pretrained(pair[0].instruct)
    tok_plain.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        dk.generate(model, tok_plain, ["ab"], 0.2, chat_template=True, progress=False)


def test_generate_api_errors(pair):
    _, model, tok = pair
    with pytest.raises(ValueError, match="3 values for 2 prompts"):
        dk.generate(model, tok, ["a", "b"], [0.1, 0.2, 0.3], progress=False)
    with pytest.raises(ValueError, match="finite"):
        dk.generate(model, tok, ["a"], float("nan"), progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dk.generate(model, tok, ["a"], 2.0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        dk.generate(model, tok, ["a"], 0.5, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="prompts"):
        dk.generate(model, tok, [], 0.5, progress=False)


def test_count_generated():
    assert count_generated([5, 6, EOS_ID, PAD_ID, PAD_ID], {EOS_ID}) == 3
    assert count_generated([5, 6, 7], {EOS_ID}) == 3
    assert count_generated([EOS_ID, EOS_ID], {EOS_ID}) == 1


def test_lambda_scope_restores_on_error_and_expand_size(pair):
    _, model, _ = pair
    dk.set_lambda(model, [0.1, 0.2])
    with pytest.raises(RuntimeError):
        with dk.lambda_scope(model, 0.9):
            raise RuntimeError("boom")
    assert torch.allclose(lambda_state(model).get(), torch.tensor([0.1, 0.2]))
    with dk.lambda_scope(model, [0.3, 0.7], expand=2):
        assert torch.allclose(lambda_state(model).lam, torch.tensor([0.3, 0.3, 0.7, 0.7]))
    dk.set_lambda(model, 0.0)
    assert generation_expand_size(model, {"num_beams": 4, "num_return_sequences": 2}) == 4
    assert generation_expand_size(model, {"num_return_sequences": 3}) == 3
    assert generation_expand_size(model, {}) == 1
    with pytest.raises(ValueError, match="expand"):
        dk.set_lambda(model, [0.1], expand=0)


def test_encode_and_left_pad_helpers(pair):
    from dami_kernels.generation import encode_prompts, left_pad

    _, _, tok = pair
    raw, templ = encode_prompts(tok, ["ab"], False), encode_prompts(tok, ["ab"])
    assert raw == [tok("ab")["input_ids"]] and len(templ[0]) > len(raw[0])
    with pytest.raises(ValueError, match="chat_template"):
        encode_prompts(tok, ["ab"], "yes")
    ids, mask = left_pad([[5, 6, 7], [8]], PAD_ID)
    assert ids.tolist() == [[5, 6, 7], [PAD_ID, PAD_ID, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[5], []], PAD_ID)
