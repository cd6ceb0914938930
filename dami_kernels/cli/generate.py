"""`dami generate`: mixed-λ generation from an Instruct/Thinking checkpoint pair.

    dami generate --instruct DIR --thinking DIR --lam 0.3 "prompt one" "prompt two"
    dami generate --instruct DIR --thinking DIR --lam 0 --lam 1 "prompt one" "prompt two"

One --lam applies to every prompt; otherwise give exactly one --lam per prompt. --compile runs the decode
step compiled with a static KV cache (torch.compile with inductor; mode="reduce-overhead", i.e. CUDA
graphs, on CUDA): the first batch of each size pays the compilation.
"""

from __future__ import annotations

import json
import math

from dami_kernels.cli.common import add_pair_args, check_lams, doc_summary, load_from_args
from dami_kernels.validation import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate with a different λ per prompt", description=doc_summary(__doc__)
    )
    add_pair_args(p)
    p.add_argument(
        "--lam", type=float, action="append", required=True, help="λ; once for all prompts or once per prompt, in order"
    )
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per prompt (default: 256)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: all)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature with --do-sample (default: the checkpoint's generation config)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="nucleus sampling with --do-sample (default: the checkpoint's generation config)",
    )
    p.add_argument("--seed", type=int, default=0, help="torch seed for --do-sample (default: 0)")
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompts as raw text")
    p.add_argument("--json", action="store_true", help="print one JSON object per result")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step (static KV cache + torch.compile; CUDA graphs on CUDA)",
    )
    p.add_argument(
        "--compile-backend",
        default=None,
        metavar="NAME",
        help="torch.compile backend for --compile (default: inductor; 'aot_eager' or 'eager' to debug)",
    )
    p.set_defaults(func=run)


def prompt_lambdas(lams: list[float], n_prompts: int) -> list[float]:
    """Expand --lam values to one per prompt; ValueError unless there is one value or one per prompt."""
    if len(lams) == 1:
        return lams * n_prompts
    if len(lams) != n_prompts:
        raise ValueError(
            f"--lam was given {len(lams)} times for {n_prompts} prompts; give it once (all prompts) or once per prompt"
        )
    return list(lams)


def run(args) -> int:
    import torch

    from dami_kernels.generation import generate

    lams = prompt_lambdas(args.lam, len(args.prompts))
    check_lams(lams, args.allow_extrapolation)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.batch_size is not None:
        positive_int(args.batch_size, "--batch-size")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValueError(f"--temperature must be a positive number, got {args.temperature!r}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must lie in (0, 1], got {args.top_p!r}")
    if args.compile_backend is not None and not args.compile:
        raise ValueError("--compile-backend needs --compile")
    compile_opt = (args.compile_backend or True) if args.compile else False
    model, tokenizer = load_from_args(args)
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    if args.do_sample:
        torch.manual_seed(args.seed)
        kwargs.update({k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None})
    results = generate(
        model,
        tokenizer,
        args.prompts,
        lams,
        batch_size=args.batch_size,
        chat_template=False if args.no_chat_template else None,
        compile=compile_opt,
        **kwargs,
    )
    for r in results:
        if args.json:
            print(
                json.dumps(
                    {"prompt": r.prompt, "lam": r.lam, "text": r.text, "num_tokens": r.num_tokens}, ensure_ascii=False
                )
            )
        else:
            print(f"=== prompt {r.prompt_index} (λ={r.lam:g}, {r.num_tokens} tokens)\n{r.text}")
    return 0
