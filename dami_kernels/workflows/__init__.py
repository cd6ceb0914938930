"""End-to-end jobs built on the engine, the estimators and the evaluation harness: training the λ(q)
estimators on a pair (`train_estimators`) and the `dami demo` study (`demo`)."""
