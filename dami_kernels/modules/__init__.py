"""Drop-in interpolating layers that read λ from one shared per-model LambdaState."""

from dami_kernels.modules.blending import blend, lam_rows_view, lam_view, token_rows
from dami_kernels.modules.embedding import InterpEmbedding
from dami_kernels.modules.experts import InterpExperts, InterpTokenLinear, InterpTopKRouter, check_moe_supported
from dami_kernels.modules.lambda_state import LambdaMode, LambdaState, RowLambda
from dami_kernels.modules.linear import InterpLinear
from dami_kernels.modules.norms import InterpLayerNorm, InterpRMSNorm, is_supported_rmsnorm
from dami_kernels.modules.swap import (
    INTERP_MODULES,
    Slot,
    covered_names,
    is_swappable,
    pair_slots,
    stored_tensors,
    swap_modules,
)
from dami_kernels.validation import validate_lambda

__all__ = [
    "LambdaState",
    "LambdaMode",
    "RowLambda",
    "validate_lambda",
    "blend",
    "lam_view",
    "lam_rows_view",
    "token_rows",
    "InterpLinear",
    "InterpEmbedding",
    "InterpRMSNorm",
    "InterpLayerNorm",
    "InterpTopKRouter",
    "InterpExperts",
    "InterpTokenLinear",
    "check_moe_supported",
    "is_supported_rmsnorm",
    "swap_modules",
    "INTERP_MODULES",
    "Slot",
    "pair_slots",
    "stored_tensors",
    "covered_names",
    "is_swappable",
]
