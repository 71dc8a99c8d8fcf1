"""The kernel contract: what a call asks of a kernel, and how a kernel says what it can do.

Every op (convolution and pooling, every pass) is described by a frozen params object
(`fastconv.params.ConvParams` / `PoolParams`) that carries, besides the shapes:

* ``pass_`` — ``"forward"``, ``"input_grad"`` (dL/dx from dL/dy) or ``"weight_grad"``
  (dL/dw and dL/db from x and dL/dy);
* ``layout`` — the memory layout of the activations, ``"NCHW"`` today;
* ``epilogue`` — the element-wise ops applied to each output after the reduction, in order
  (``("bias",)`` when the layer has a bias; ``"relu"`` and ``"add"`` (a residual) are names the
  contract already knows so that a kernel which does not fuse them refuses them by name).

A kernel module answers for every field in its ``supports(p, **options)``: it returns ``None``
when it can run ``p`` exactly, or a sentence saying why not. Kernels start their ``supports``
with `refuse`, which checks the three fields against what the kernel declares, so a field a
kernel has not been taught is refused with its name and value instead of being ignored.
The rest of a kernel's contract (`fastconv.registry` calls it):

    supports(p, **options) -> str | None    # None, or why it cannot run p
    workspace_bytes(p, **options) -> int    # every byte run() needs beyond its output
    prepare(w, b, p, **options) -> packed   # one-time weight work (a plan prepares once)
    run(x, packed, p, out, workspace, **options) -> None
                                            # writes the result into out; ``workspace`` is a
                                            # caller-allocated uint8 array of workspace_bytes(p)
"""

from __future__ import annotations

from typing import Any

PASSES = ("forward", "input_grad", "weight_grad")
LAYOUTS = ("NCHW",)
EPILOGUE_OPS = ("bias", "relu", "add")


def refuse(
    p: Any,
    *,
    passes: tuple[str, ...] = ("forward",),
    layouts: tuple[str, ...] = ("NCHW",),
    epilogue: tuple[str, ...] = ("bias",),
    options: dict[str, Any] | None = None,
    takes: tuple[str, ...] = (),
    dtypes: tuple[str, ...] = (),
) -> str | None:
    """Why a kernel that runs ``passes`` / ``layouts`` and fuses the ``epilogue`` ops cannot
    run ``p``, or ``None`` when those three fields are within what it declares.

    A kernel may hand over the rest of every kernel's preamble too: its keyword ``options``
    (refused unless named in ``takes``) and the ``dtypes`` it computes in."""
    if p.pass_ not in passes:
        return f"pass {p.pass_!r} is not one it runs ({', '.join(passes)})"
    if p.layout not in layouts:
        return f"layout {p.layout!r} is not one it reads ({', '.join(layouts)})"
    extra = [op for op in p.epilogue if op not in epilogue]
    if extra:
        return f"epilogue op(s) {extra} are not fused by it (it fuses: {', '.join(epilogue) or 'none'})"
    if options is not None:
        unknown = sorted(set(options) - set(takes))
        if unknown:
            if not takes:
                return f"takes no options, got {unknown}"
            return f"takes only the option {', '.join(takes)}, got {unknown}"
    if dtypes and p.dtype not in dtypes:
        return f"dtype must be {' or '.join(dtypes)}, got {p.dtype}"
    return None


def check_fields(pass_: str, layout: str, epilogue: tuple[str, ...]) -> None:
    """Reject a description naming a pass, layout or epilogue op the contract does not know."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for op in epilogue:
        if op not in EPILOGUE_OPS:
            raise ValueError(f"epilogue ops must be among {EPILOGUE_OPS}, got {op!r}")
