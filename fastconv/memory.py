"""Memory budgets: every large allocation of a call is sized and checked before it is made.

A call allocates at most three large things: a contiguous copy of an input that is not already
C-contiguous NCHW (`fastconv.validate`), the kernel's scratch (``workspace_bytes``, allocated by
`fastconv.plan` and handed to the kernel) and the output. Each is checked here first, so an
over-large call raises `MemoryError` naming the argument, the bytes and the limit instead of
being handed to the OS: a lazily committed ``np.empty`` "succeeds" and the process is then
OOM-killed while the kernel writes into it.

Two limits, both settable:

* the **call limit** (`set_output_limit`): input copies + output of one call. By default half of
  the memory this process can have (the smallest of physical memory, the cgroup's
  ``memory.max`` and ``RLIMIT_AS``), which leaves the other half to the rest of the process;
* the **workspace limit** (`set_workspace_limit`): a kernel's scratch, 2 GiB by default.

When ``RLIMIT_AS`` is set, the address space still free under it also bounds every check.
"""

from __future__ import annotations

import functools
import math
import os
import resource
from typing import Any

import numpy as np

_GiB = 1024**3


def _cgroup_limit() -> int:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return 1 << 62


def available_memory() -> int:
    """The most memory this process can have: physical RAM, capped by cgroup and RLIMIT_AS."""
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        phys = 1 << 62
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return min(phys, _cgroup_limit(), soft if soft != resource.RLIM_INFINITY else 1 << 62)


_limits = {"call": available_memory() // 2, "workspace": 2 * _GiB}


def _set(kind: str, nbytes: int) -> None:
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise TypeError(f"nbytes must be an int, got {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    _limits[kind] = int(nbytes)


def set_output_limit(nbytes: int) -> None:
    """Set the most one call may allocate for its output and input copies together.

    Parameters
    ----------
    nbytes : int
        Bytes, >= 0. The default is half of `available_memory`.

    Raises
    ------
    TypeError, ValueError
        For a non-int or negative ``nbytes``.

    Examples
    --------
    >>> import fastconv
    >>> old = fastconv.get_output_limit()
    >>> fastconv.set_output_limit(1 << 19)
    >>> fastconv.max_pool2d(np.zeros((1, 1, 1024, 1024), np.float32), 2)
    Traceback (most recent call last):
    ...
    MemoryError: max_pool2d (max 1x1x1024x1024 k2x2 s2x2 p0x0): the output (1, 1, 512, 512) needs 1,048,576 bytes ...
    >>> fastconv.set_output_limit(old)
    """
    _set("call", nbytes)


def get_output_limit() -> int:
    """The call limit of `set_output_limit`, in bytes."""
    return _limits["call"]


def set_workspace_limit(nbytes: int) -> None:
    """Set the largest scratch buffer a kernel may be given (default 2 GiB).

    Parameters
    ----------
    nbytes : int
        Bytes, >= 0. A call whose kernel needs more raises `MemoryError` before allocating.

    Raises
    ------
    TypeError, ValueError
        For a non-int or negative ``nbytes``.
    """
    _set("workspace", nbytes)


def get_workspace_limit() -> int:
    """The workspace limit of `set_workspace_limit`, in bytes."""
    return _limits["workspace"]


def _address_space_left() -> int:
    """Bytes still free under RLIMIT_AS, or a huge number when it is not set (one syscall)."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 62
    try:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 1 << 62
    return soft - used


def _fail(what: str, parts: list[tuple[str, int]], limit: int, knob: str) -> None:
    parts = [(name, b) for name, b in parts if b]
    need = sum(b for _, b in parts)
    if len(parts) == 1:
        detail = f"{parts[0][0]} needs {need:,} bytes"
    else:
        detail = " + ".join(f"{name} {b:,}" for name, b in parts) + f" = {need:,} bytes"
    raise MemoryError(f"{what}: {detail}, over the limit of {limit:,} bytes ({knob})")


@functools.lru_cache(maxsize=None)
def _itemsize(dtype: Any) -> int:
    # np.dtype() of a name costs ~0.5 us, a third of this check's time on a small layer
    return np.dtype(dtype).itemsize


def check_call(op: str, p: Any, out_dtype: Any, copies: tuple[tuple[str, int], ...] = ()) -> None:
    """Raise MemoryError before a call allocates its input copies and output over the limit.

    ``op`` names the function and ``p`` (a ConvParams/PoolParams) the layer and its output
    shape; ``copies`` are ``(argument, bytes)`` of the inputs that must be copied to contiguous
    memory (0 bytes for those used in place).
    """
    out_shape = p.out_shape
    need_out = math.prod(out_shape) * _itemsize(out_dtype)
    total = need_out + sum(b for _, b in copies)
    if total <= _limits["call"] and total < (1 << 30):  # the common case: no syscall, no message
        return
    what = f"{op} ({p.describe()})"
    parts = [(f"the copy of {name}", b) for name, b in copies if b]
    parts.append((f"the output {tuple(out_shape)}", need_out))
    if total > _limits["call"]:
        _fail(what, parts, _limits["call"], "fastconv.set_output_limit")
    left = _address_space_left()
    if total > left:
        _fail(what, parts, left, "free address space under RLIMIT_AS")


def check_workspace(what: str, nbytes: int) -> None:
    """Raise MemoryError before allocating a kernel's ``nbytes`` of scratch over the limit."""
    if nbytes > _limits["workspace"]:
        _fail(what, [("the workspace", nbytes)], _limits["workspace"], "fastconv.set_workspace_limit")
    if nbytes >= (1 << 30):
        left = _address_space_left()
        if nbytes > left:
            _fail(what, [("the workspace", nbytes)], left, "free address space under RLIMIT_AS")
