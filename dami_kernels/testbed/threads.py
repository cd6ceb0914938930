"""torch intra-op threads for runs on the tiny testbed pair: one by default.

The testbed model (hidden 128) is too small for intra-op parallelism to pay: each op is tiny, and on a
busy machine torch's threads spin and wait for cores that other processes hold (the demo's timings with
torch's default threads and with one: bench/NOTES.md, "Threads on the testbed pair"). So commands that run
the testbed pair use ONE thread unless told otherwise: ``--threads N`` or ``DAMI_THREADS=N`` (both also
apply to any other pair, where torch's default is kept otherwise).

`configure_threads` sets torch's intra-op thread count for the whole process (`torch.set_num_threads`)
and does not restore it: the CLI commands (`cli/common.load_from_args`, `dami demo`) and lm-eval's
``dami`` model (`integrations/lm_eval.DamiLM`) call it before loading the pair.
"""

from __future__ import annotations

import os
from pathlib import Path

from dami_kernels.validation import is_positive_int

ENV_VAR = "DAMI_THREADS"


def requested_threads(threads: int | None = None, name: str = "threads") -> int | None:
    """`threads` when given, else $DAMI_THREADS when set, else None. ValueError naming `name` (or the
    variable) on a count that is not a positive integer."""
    source = name
    if threads is None:
        text = os.environ.get(ENV_VAR, "").strip()
        if not text:
            return None
        source = ENV_VAR
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{ENV_VAR}={text!r} is not an integer number of threads") from None
    if not is_positive_int(threads):
        raise ValueError(f"{source} must be a positive integer number of threads, got {threads!r}")
    return threads


def is_testbed_pair(instruct_dir, thinking_dir) -> bool:
    """Whether the two directories are the shipped testbed pair (`testbed_dirs()`)."""
    from dami_kernels.testbed.paths import ASSETS_DIR

    try:
        return (
            Path(instruct_dir).resolve() == (ASSETS_DIR / "instruct").resolve()
            and Path(thinking_dir).resolve() == (ASSETS_DIR / "thinking").resolve()
        )
    except (OSError, TypeError):
        return False


def configure_threads(threads: int | None = None, *, testbed: bool, name: str = "threads") -> int:
    """Set torch's intra-op threads: `threads`, else $DAMI_THREADS, else 1 when `testbed` (the tiny pair
    runs), else leave torch's default. Returns the number of threads torch now uses.

    A process-wide effect: `torch.set_num_threads` applies to every later torch op in the process and is
    not restored. Called by the CLI (`cli/common.load_from_args`, `dami demo`) and by lm-eval's ``dami``
    model; library functions such as `load_pair` and `generate` never change the thread count.
    """
    import torch

    n = requested_threads(threads, name)
    if n is None and testbed:
        n = 1
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()
