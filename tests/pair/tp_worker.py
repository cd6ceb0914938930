"""Run under torchrun (2 processes, gloo, CPU) by tests/pair/test_tensor_parallel.py: load a pair with
tp_plan="auto" and, in the same process, without it; rank 0 writes the differences as JSON.

argv: instruct_dir thinking_dir out_json
"""

from __future__ import annotations

import json
import os
import sys

import torch

import dami_kernels as dk
from dami_kernels.hf import load_tokenizer


def main() -> None:
    torch.set_num_threads(1)
    instruct, thinking, out_json = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    tp = dk.load_pair(instruct, thinking, dtype=torch.float32, tp_plan="auto", progress=False)
    ref = dk.load_pair(instruct, thinking, dtype=torch.float32, progress=False)
    sharded = sum(type(p).__name__ == "DTensor" for p in tp.parameters())
    ids = torch.randint(5, 90, (3, 11), generator=torch.Generator().manual_seed(0))
    lams = torch.tensor([0.0, 0.35, 1.0])
    result = {"sharded_params": sharded, "world": int(os.environ["WORLD_SIZE"])}
    with torch.no_grad():
        for label, lam in (("uniform_0.3", 0.3), ("mixed", lams)):
            with dk.lambda_scope(tp, lam), dk.lambda_scope(ref, lam):
                a, b = tp(ids).logits, ref(ids).logits
            result[label] = float((a - b).norm() / b.norm())
    tok = load_tokenizer(instruct)
    prompts = ["abc", "hello world", "1+2="]
    gen_tp = dk.generate(tp, tok, prompts, [0.0, 0.5, 1.0], max_new_tokens=8, do_sample=False, progress=False)
    gen_ref = dk.generate(ref, tok, prompts, [0.0, 0.5, 1.0], max_new_tokens=8, do_sample=False, progress=False)
    result["generate_equal"] = [x.text == y.text for x, y in zip(gen_tp, gen_ref, strict=True)]
    if rank == 0:
        with open(out_json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
