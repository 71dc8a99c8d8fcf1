"""Which BLAS the GEMM kernels (pointwise, im2col) call.

Measured on this machine (1 thread, CPU time, interleaved medians): the OpenBLAS 0.3.31 that
numpy ships runs our GEMM shapes 10–20% faster than the OpenBLAS 0.3.30 behind
``scipy.linalg.cython_blas`` (e.g. 64×256 @ 256×3136: 0.80×; 256×2400 @ 2400×676: 0.91×).
So the kernels call numpy's library through function pointers found here, and fall back to
scipy's ``cython_blas`` (pointers from its capsules, so scipy.linalg — ~0.3 s to import — is
only loaded then) when numpy's BLAS is not an ILP64 scipy-openblas build we recognise
(``FASTCONV_BLAS=scipy`` forces the fallback).
"""

from __future__ import annotations

import os


def numpy_openblas() -> dict[str, int] | None:
    """Addresses of ``sgemm``/``dgemm`` and the thread-count functions of numpy's ILP64 OpenBLAS,
    and of its ``blas_memory_alloc``/``blas_memory_free`` (``memory_alloc``/``memory_free``) where
    it exports them (gemm_blas.pxi warms OpenBLAS's buffer table with them)."""
    if os.environ.get("FASTCONV_BLAS", "") == "scipy":
        return None
    import ctypes

    import numpy
    from threadpoolctl import ThreadpoolController

    root = os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api != "openblas" or not os.path.abspath(lib.filepath).startswith(root + os.sep + "numpy"):
            continue
        dll = ctypes.CDLL(lib.filepath)
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", "_64"), ("", "_64")):
            names = {
                "sgemm": f"{prefix}sgemm_{suffix}",
                "dgemm": f"{prefix}dgemm_{suffix}",
                "set_threads": f"{prefix}openblas_set_num_threads{suffix}",
                "get_threads": f"{prefix}openblas_get_num_threads{suffix}",
            }
            if all(hasattr(dll, s) for s in names.values()):
                for k in ("memory_alloc", "memory_free"):
                    if hasattr(dll, f"{prefix}blas_{k}"):
                        names[k] = f"{prefix}blas_{k}"
                    elif hasattr(dll, f"blas_{k}"):
                        names[k] = f"blas_{k}"
                return {k: ctypes.cast(getattr(dll, s), ctypes.c_void_p).value for k, s in names.items()}
    return None


def scipy_cython_blas() -> dict[str, int]:
    """Addresses of ``sgemm``/``dgemm`` (LP64) exported by ``scipy.linalg.cython_blas``."""
    import ctypes

    from scipy.linalg import cython_blas

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    caps = cython_blas.__pyx_capi__
    return {k: get_ptr(caps[k], get_name(caps[k])) for k in ("sgemm", "dgemm")}
