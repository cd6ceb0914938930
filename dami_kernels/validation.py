"""The shared input rules: numbers that are not bools, finite and fp32-representable λ, λ in [0, 1], positive ints.

The lowest layer of the package (torch and the standard library only). Every rule takes the name to put in
its message; a caller may pass `expected`/`got`/`hint` to word its own context, while the rule itself (what
is accepted, what is refused) lives only here. Every refusal is a ValueError.

Importing it loads no torch (`dami --help` stays light): the rules that take tensors import it when called, and
a value can only be a tensor once torch is loaded.
"""

from __future__ import annotations

import math
import sys
from numbers import Real
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FP32_MAX = 3.4028234663852886e38  # the largest finite float32, torch.finfo(torch.float32).max
EXTRAPOLATION_HINT = "; pass --allow-extrapolation to accept it"


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_real(value) -> bool:
    """A real number (int, float, numpy scalar, Fraction, ...) that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A Python int or float (subclasses included) that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
    """A Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value) -> bool:
    return is_int(value) and value >= 1


def positive_int(value, name: str, got: str | None = None) -> int:
    """value when it is an int ≥ 1 (not a bool); else ValueError "{name} must be a positive integer, got {got}"
    (got: repr(value) unless given)."""
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer, got {repr(value) if got is None else got}")
    return value


def to_float(value, name: str, finite: str = "finite") -> float:
    """float(value); an integer too large for a float is a ValueError "{name} must be {finite}, got an integer
    of N digits"."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {finite}, got an integer of {len(str(value))} digits") from None


def check_real(value, name: str, expected: str = "be a number", got: str | None = None):
    """value when it is a real number that is not a bool; else ValueError "{name} must {expected}, got {got}"
    (got: the type's name unless given)."""
    if not is_real(value):
        raise ValueError(f"{name} must {expected}, got {type(value).__name__ if got is None else got}")
    return value


def real_number(
    value, name: str, expected: str = "be a number", got: str | None = None, finite: str = "finite"
) -> float:
    """`check_real`, then `to_float`: value as a float."""
    return to_float(check_real(value, name, expected, got), name, finite)


def is_finite(value) -> bool:
    """Every value of a float or tensor is finite (a tensor is read on the host: one sync on a device)."""
    if _is_tensor(value):
        return bool(value.isfinite().all())
    return math.isfinite(value)


def show(value) -> str:
    """A number as str() shows it; a tensor's values on the host (its one value, or the first 8)."""
    if not _is_tensor(value):
        return str(value)
    v = value.cpu().reshape(-1).tolist()
    return f"{v[0]}" if len(v) == 1 else f"{v[:8]}{' ...' if len(v) > 8 else ''}"


def check_finite(value, name: str, got: str | None = None) -> None:
    """ValueError "{name} must be finite, got {got}" (got: `show(value)` unless given) when value (a number or a
    tensor) holds NaN or ±inf."""
    if not is_finite(value):
        raise ValueError(f"{name} must be finite, got {show(value) if got is None else got}")


def finite_in_float32(value: float) -> bool:
    """value stays finite when rounded to float32 (the dtype of λ in the kernels)."""
    return math.isfinite(value) and abs(value) <= FP32_MAX


def check_float32(value: float, name: str, hint: str, got: str | None = None) -> None:
    """ValueError "{name} must be finite in float32 ({hint}), got {got}" (got: repr(value) unless given) when
    |value| exceeds the largest float32."""
    if not finite_in_float32(value):
        raise ValueError(f"{name} must be finite in float32 ({hint}), got {repr(value) if got is None else got}")


def outside_unit_interval(values) -> bool:
    """Any value (a float or a tensor) lies outside [0, 1]."""
    if _is_tensor(values):
        return bool(((values < 0) | (values > 1)).any())
    return not 0.0 <= values <= 1.0


def check_lambda_range(values, name: str, allow_extrapolation: bool, got: str | None = None, hint: str = "") -> None:
    """λ (a float or a tensor) in [0, 1] unless allow_extrapolation; else ValueError "{name} must lie in [0, 1],
    got {got}{hint}" (got: `show(values)` unless given)."""
    if not allow_extrapolation and outside_unit_interval(values):
        raise ValueError(f"{name} must lie in [0, 1], got {show(values) if got is None else got}{hint}")


def check_lambda_flag(value: float, name: str, allow_extrapolation: bool) -> None:
    """A λ given on the command line: in [0, 1] unless --allow-extrapolation; else ValueError "{name} lies outside
    [0, 1]; pass --allow-extrapolation to accept it" (name: the flag and the value as typed)."""
    if not allow_extrapolation and outside_unit_interval(value):
        raise ValueError(f"{name} lies outside [0, 1]{EXTRAPOLATION_HINT}")


PAIR_EXTRAPOLATION_HINT = (
    "; values outside need an explicit opt-in (allow_extrapolation=True when loading or converting the pair)"
)


def validate_lambda(lam, allow_extrapolation: bool, name: str = "lam") -> tuple[torch.Tensor, bool]:
    """Check λ and return (fp32 values [n] on the CPU, per_sequence).

    lam: a Python number, a 0-d tensor (scalar: applies to any batch), or a 1-D tensor or list of
    numbers [B] (per sequence). A device tensor is copied to the host once (one sync) for the checks.
    Raises ValueError for other types or shapes, for NaN/inf, and for values outside [0, 1] unless
    allow_extrapolation is set.
    """
    import torch

    if isinstance(lam, (list, tuple)):
        lam = lambda_list(lam, name)
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise ValueError(f"{name} must be a float or a floating-point tensor, got dtype {lam.dtype}")
        if lam.dim() > 1:
            raise ValueError(f"{name} must be a float or a 1-D tensor [batch], got shape {tuple(lam.shape)}")
        if lam.dim() == 1 and lam.numel() == 0:
            raise ValueError(f"{name} is an empty tensor; give one value per sequence")
        if lam.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (it holds no values)")
        values = lam.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
        per_sequence = lam.dim() == 1
    else:
        values = torch.tensor([real_number(lam, name, "be a float or a 1-D tensor [batch]")], dtype=torch.float32)
        per_sequence = False
    check_finite(values, name)
    check_lambda_range(values, name, allow_extrapolation, hint=PAIR_EXTRAPOLATION_HINT)
    return values, per_sequence


def lambda_list(values, name: str = "lam") -> torch.Tensor:
    """A list or tuple of λ numbers -> fp32 tensor [n]; ValueError for anything but real numbers (booleans,
    strings, bytes, nested lists) and for an empty list. The one place a list of λ values is read."""
    import torch

    for bad in [v for v in values if not is_real(v)][:1]:
        check_real(bad, f"{name} given as a list", "hold numbers only", got=f"{type(bad).__name__} {bad!r:.40}")
    if len(values) == 0:
        raise ValueError(f"{name} is an empty list; give one value per sequence")
    return torch.tensor([to_float(v, name) for v in values], dtype=torch.float32)
