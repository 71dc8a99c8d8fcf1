"""Plans: a kernel chosen for one layer, its prepared weights, and the one place kernels run.

`Plan.run` (convolutions) and `run_pool` (pools) are the only callers of a kernel's ``run``.
Both size the output and the kernel's scratch first (`fastconv.memory`), allocate them, and hand
the scratch to the kernel as a ``uint8`` array (the contract's caller-owned workspace), so a
kernel never allocates and an allocation that cannot be made is a `MemoryError` before the
kernel starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import memory, registry, threads
from .params import ConvParams, PoolParams

_EMPTY = np.empty(0, dtype=np.uint8)


def workspace(kernel: registry.Kernel, p: Any, nthreads: int) -> np.ndarray:
    """The caller-owned scratch ``kernel`` needs for ``p``, checked against the limit first."""
    need = kernel.workspace_bytes(p, nthreads)
    if need == 0:
        return _EMPTY
    memory.check_workspace(f"{kernel.name} ({p.describe()})", need)
    return np.empty(need, dtype=np.uint8)


def _finite(a: np.ndarray) -> bool:
    from .kernels import _common

    return bool(_common.all_finite(a.reshape(-1), threads.get_num_threads()))


class Plan:
    """Prepared weights for one layer shape: ``prepare`` once, ``run`` many times.

    A kernel whose arithmetic spreads a non-finite value over neighbouring outputs
    (`registry.Kernel.needs_finite`: Winograd's transforms) runs a call whose weights or input
    hold NaN/Inf on ``direct`` instead, so non-finite values land where the definition puts
    them (see the README's note on NaN and Inf).
    """

    def __init__(self, algorithm: registry.Kernel, w: np.ndarray, b: np.ndarray | None, p: ConvParams):
        self.algorithm, self.params = algorithm, p
        self._w, self._b = w, b
        # the workspace budget is checked before prepare allocates the packed weights
        memory.check_workspace(
            f"{algorithm.name} ({p.describe()})", algorithm.workspace_bytes(p, threads.get_num_threads())
        )
        self.packed = algorithm.prepare(w, b, p) if p.n > 0 else None
        self._weights_finite = not algorithm.needs_finite or p.n == 0 or _finite(w)
        self._fallback: Plan | None = None

    def _direct(self) -> "Plan":
        if self._fallback is None:
            self._fallback = Plan(registry.get("direct"), self._w, self._b, self.params)
        return self._fallback

    def run(self, x: np.ndarray, out: np.ndarray | None = None, p: ConvParams | None = None) -> np.ndarray:
        """Run on ``x`` (contiguous NCHW) into ``out`` (allocated if None) and return it.

        ``p`` runs the plan on another batch size (``self.params.with_batch(n)``): the prepared
        weights do not depend on the batch, so a layer keeps one plan for every batch.
        """
        p = self.params if p is None else p
        if out is None:
            memory.check_call("conv2d", p, p.dtype)
            out = np.empty(p.out_shape, dtype=p.dtype)
        if p.n == 0:
            return out
        if self.algorithm.needs_finite and not (self._weights_finite and _finite(x)):
            return self._direct().run(x, out, p)
        nt = threads.get_num_threads()
        ws = workspace(self.algorithm, p, nt)
        self.algorithm.run(x, self.packed, p, out, ws, nt)
        return out


def run_pool(x: np.ndarray, p: PoolParams, out: np.ndarray, indices: np.ndarray | None = None) -> None:
    """Run the registered pooling kernel for ``p.kind`` into ``out`` (and ``indices``)."""
    if p.n == 0:
        return
    kernel = registry.POOLS[p.kind]
    nt = threads.get_num_threads()
    kernel.run(x, None, p, out, workspace(kernel, p, nt), nt, indices=indices)
