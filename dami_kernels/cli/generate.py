"""`dami generate`: mixed-λ generation from an Instruct/Thinking checkpoint pair.

    dami generate --instruct DIR --thinking DIR --lam 0.3 "prompt one" "prompt two"
    dami generate --instruct DIR --thinking DIR --lam 0 --lam 1 "prompt one" "prompt two"

One --lam applies to every prompt; otherwise give exactly one --lam per prompt. --compile runs the decode
step compiled with a static KV cache (torch.compile with inductor; mode="reduce-overhead", i.e. CUDA
graphs, on CUDA): the first batch of each size pays the compilation.
"""
from __future__ import annotations

import json

from dami_kernels.cli.common import add_pair_args, check_lams, load_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate with a different λ per prompt",
                              description=__doc__.splitlines()[0])
    add_pair_args(p)
    p.add_argument("--lam", type=float, action="append", required=True,
                   help="λ; once for all prompts or once per prompt, in order")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: all)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompts as raw text")
    p.add_argument("--json", action="store_true", help="print one JSON object per result")
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step (static KV cache + torch.compile; CUDA graphs on CUDA)")
    p.add_argument("--compile-backend", default=None, metavar="NAME",
                   help="torch.compile backend for --compile (default: inductor; 'aot_eager' or 'eager' to debug)")
    p.set_defaults(func=run)


def prompt_lambdas(lams: list[float], n_prompts: int) -> list[float]:
    """Expand --lam values to one per prompt; ValueError unless there is one value or one per prompt."""
    if len(lams) == 1:
        return lams * n_prompts
    if len(lams) != n_prompts:
        raise ValueError(f"--lam was given {len(lams)} times for {n_prompts} prompts; "
                         "give it once (all prompts) or once per prompt")
    return list(lams)


def run(args) -> int:
    import torch

    from dami_kernels.generation import generate

    lams = prompt_lambdas(args.lam, len(args.prompts))
    check_lams(lams, args.allow_extrapolation)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.compile_backend is not None and not args.compile:
        raise ValueError("--compile-backend needs --compile")
    compile_opt = (args.compile_backend or True) if args.compile else False
    model, tokenizer = load_from_args(args)
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    if args.do_sample:
        torch.manual_seed(args.seed)
        kwargs.update({k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None})
    results = generate(model, tokenizer, args.prompts, lams, batch_size=args.batch_size,
                       chat_template=False if args.no_chat_template else None, compile=compile_opt, **kwargs)
    for r in results:
        if args.json:
            print(json.dumps({"prompt": r.prompt, "lam": r.lam, "text": r.text, "num_tokens": r.num_tokens},
                             ensure_ascii=False))
        else:
            print(f"=== prompt {r.prompt_index} (λ={r.lam:g}, {r.num_tokens} tokens)\n{r.text}")
    return 0
