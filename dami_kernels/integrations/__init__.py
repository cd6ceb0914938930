"""Adapters to other tools; each imports its tool only when used (`import dami_kernels` never needs them).

- `lm_eval`: the `dami` model and the `dami_answer` filter for EleutherAI's lm-evaluation-harness.
"""
