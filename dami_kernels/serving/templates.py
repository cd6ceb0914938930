"""Response templates (transformers' declarative chat-response parsing) for chat formats transformers has no
fallback for. transformers splits a chat reply into `reasoning_content` and `content` with the tokenizer's
`response_template`, else with a per-family fallback chosen by `model_type` (Qwen's `<|im_start|>` format
for every qwen3 model). The shipped testbed pair is a qwen3 model with its own small chat format, so it
needs its own template.
"""
from __future__ import annotations


def testbed_response_template(eos_token: str = "<|eos|>") -> dict:
    """The testbed chat format: the reply follows `<|assistant|>`; `<think>…</think>` (the Thinking side's
    scratchpad) is the reasoning, the rest up to EOS the content. The reasoning field is named `thinking`: the
    name transformers 5.17 reads, and one of the names 5.24 reads as `reasoning_content`."""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": "<|assistant|>",
        "fields": {
            "thinking": {"open": "<think>", "close": "</think>", "content": "text"},
            "content": {"close": eos_token, "content": "text"},
        },
    }
