"""Numba settings shared by every JIT kernel (STYLE.md §8: fastmath comes from here, never literal).

Reassociation and contraction let LLVM vectorise and fuse multiply-adds; we do *not* allow
``nnan``/``ninf``, because NaN and Inf must propagate through convolution and pooling exactly
as they do in torch.
"""
FASTMATH = {"reassoc", "contract", "nsz"}
# cache=True: compiled code is written next to the module (or numba's cache dir), so the first
# call in a new process loads machine code instead of compiling.
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH)
