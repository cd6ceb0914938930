"""`dami merge`: write a plain HF checkpoint merged at one fixed λ (the offline interpolation baseline).

dami merge --instruct DIR --thinking DIR --lam 0.5 --out DIR [--overwrite]
"""

from __future__ import annotations


def register(subparsers) -> None:
    from dami_kernels.cli.common import add_no_check_finite_arg, add_tokenizer_mismatch_arg, doc_summary

    p = subparsers.add_parser("merge", help="export the pair merged at a fixed λ", description=doc_summary(__doc__))
    p.add_argument("--instruct", required=True, help="Instruct checkpoint directory (λ=0)")
    p.add_argument("--thinking", required=True, help="Thinking checkpoint directory (λ=1)")
    p.add_argument("--lam", type=float, required=True, help="λ in [0, 1] (outside it with --allow-extrapolation)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (only a directory that dami wrote, or an empty one)",
    )
    p.add_argument("--allow-extrapolation", action="store_true", help="accept λ outside [0, 1]")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin) checkpoints")
    add_tokenizer_mismatch_arg(p)
    add_no_check_finite_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dami_kernels.cli.common import check_lams
    from dami_kernels.pair import merge_pair

    check_lams([args.lam], args.allow_extrapolation)
    out = merge_pair(
        args.instruct,
        args.thinking,
        args.lam,
        args.out,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        allow_extrapolation=args.allow_extrapolation,
        check_finite=args.check_finite,
        allow_tokenizer_mismatch=args.allow_tokenizer_mismatch,
    )
    print(f"wrote {out} (λ={args.lam!r})")
    return 0
