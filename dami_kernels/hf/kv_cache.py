"""The KV cache between forward calls, under the name the installed transformers uses.

transformers 5.2x renamed the forward argument and output field `past_key_values` to `cache`; the old
name still works there but prints a deprecation warning on every run. Older releases (>= 4.56, which
setup.py allows) know only `past_key_values`.
"""

from __future__ import annotations

import dataclasses
import inspect


def cache_kwarg(model) -> str:
    """ "cache" when the model's forward takes it, else "past_key_values"."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache a forward call returned (`output.cache`, or `output.past_key_values` before the rename)."""
    names = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()
    return output.cache if "cache" in names else output.past_key_values
