"""Compiled kernels, one module per algorithm (installed as ``fastconv.kernels``).

Every convolution module follows the contract in `fastconv.dispatch`
(``supports / workspace_bytes / prepare / run``). Kernels assume validated, C-contiguous
float32/float64 NCHW arrays and never raise for user input: `fastconv.validate` did that.
"""
