"""fastconv: compiled CPU convolution and pooling kernels with torch.nn.functional signatures.

>>> import numpy as np, fastconv
>>> x = np.random.rand(1, 3, 32, 32).astype(np.float32)
>>> w = np.random.rand(8, 3, 3, 3).astype(np.float32)
>>> fastconv.conv2d(x, w, padding=1).shape
(1, 8, 32, 32)
"""

from __future__ import annotations

import importlib.util as _util

# The kernels are compiled into ``fastconv.kernels`` by ``pip install``; the bare source folder
# (``python`` started in a checkout) has none, and would fail at the first call instead.
if _util.find_spec("fastconv.kernels") is None:
    raise ImportError(
        "fastconv is not built here: `pip install .` and run from elsewhere "
        f"(this fastconv is the source folder {__path__[0]})"
    )

from .functional import adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d
from .layers import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from .memory import get_output_limit, get_workspace_limit, set_output_limit, set_workspace_limit
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"


def algorithms() -> list[str]:
    """Names of the registered convolution algorithms (valid values of ``algo=``)."""
    from .registry import names

    return names()


__all__ = [
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "algorithms",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "set_num_threads",
    "get_num_threads",
    "set_workspace_limit",
    "get_workspace_limit",
    "set_output_limit",
    "get_output_limit",
    "__version__",
]
