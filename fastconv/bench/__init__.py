"""The benchmark harness behind ``fastconv bench`` and ``benchmarks/``.

suites (layers from text files) → timer (interleaved, median and spread) with peers (torch,
ONNX Runtime, NumPy) → report (table, JSON, chart); machine (peaks, info) and compare (the CI
regression gate). `run_suite` is the entry point used by the CLI and the pytest-benchmark files.
"""
