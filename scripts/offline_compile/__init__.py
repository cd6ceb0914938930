"""What the offline compile tools share: `triton_shim` (every use of Triton internals), `harness` (the model
shapes, the config sources and the launcher run on CPU stand-ins, its launches recorded) and `report` (the
analysis of a compiled variant and the JSON rows; what it reads from the PTX and TTGIR is
dami_kernels.ops.common.compiled_facts). The tools: scripts/compile_check.py (the dense linears),
scripts/compile_check_moe.py (the MoE grouped kernel), scripts/count_variants.py (distinct cache keys).

Every tool imports this package before dami_kernels: the kernels must be defined by the real (not interpreted)
JITFunction, so TRITON_INTERPRET is turned off here, before they load.
"""

import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for dami_kernels
