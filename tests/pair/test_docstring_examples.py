"""The `Examples::` blocks of the public API's docstrings run as written (doctest, CPU, seconds).

`interp_linear` on small tensors; `load_pair` and `generate` on the shipped testbed pair.
"""

from __future__ import annotations

import doctest

import pytest

from dami_kernels.generation import generate
from dami_kernels.ops.interp_linear.op import interp_linear
from dami_kernels.pair.load import load_pair


@pytest.mark.parametrize("func", [interp_linear, load_pair, generate], ids=lambda f: f.__name__)
def test_docstring_examples_run(func, one_thread, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that wrote a file would write it here
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(func, func.__name__, globs={}) if t.examples]
    assert tests, f"{func.__name__} has no docstring example"
    report: list[str] = []
    runner = doctest.DocTestRunner(verbose=False)
    for test in tests:
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0
    assert results.failed == 0, "".join(report)
