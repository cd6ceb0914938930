"""Estimator directories: where trained estimators live and how they are loaded.

A directory written by `dami estimate train` (dami_kernels.workflows.train_estimators) holds
`conf.json` (DAMI-Conf) and `pref/` (the DAMI-Pref head). The package ships one trained on the testbed
pair: `SHIPPED_DIR`.
"""

from __future__ import annotations

from pathlib import Path

from dami_kernels.estimators.conf_estimator import DamiConf
from dami_kernels.estimators.pref import PrefHead

SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "testbed"


def load_estimator(method: str, directory=None):
    """The "conf" (DamiConf) or "pref" (PrefHead) estimator from directory (default: SHIPPED_DIR)."""
    directory = Path(directory) if directory is not None else SHIPPED_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"estimator directory not found: {directory}")
    if method == "conf":
        return DamiConf.load(directory / "conf.json")
    if method == "pref":
        return PrefHead.load(directory / "pref")
    raise ValueError(f"method must be 'conf' or 'pref', got {method!r}")
