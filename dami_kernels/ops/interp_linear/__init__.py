"""The interpolated linear op y_r = (1-λ_r)(W_I x_r + b_I) + λ_r(W_T x_r + b_T): public function (`op`), Triton
kernel, launcher, custom op, torch path and fp64 reference."""

from dami_kernels.ops.interp_linear.op import interp_linear, interp_linear_layer, layer_memo
from dami_kernels.ops.interp_linear.reference import interp_linear_fp64

__all__ = ["interp_linear", "interp_linear_layer", "layer_memo", "interp_linear_fp64"]
