"""cd_fast.bench: the benchmark harness (`python -m bench` from a checkout, or `cdfast bench`)."""
