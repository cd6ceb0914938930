"""End-to-end jobs built on the engine, the estimators and the evaluation harness: training the λ(q)
estimators on a pair (`train_estimators`) and the `dami demo` study (`demo`)."""

# Held-out problems in `dami demo` by default. Kept here, not in `demo.py`, so that `dami --help` can show
# it without importing torch and transformers.
DEMO_DEFAULT_N = 1000  # = evaluation.preregistered.DEFAULT_N
