"""Build script: compiles the Cython kernels in ``kernels/`` (with OpenMP) and installs
``kernels/`` as the subpackage ``fastconv.kernels``.

The kernels are compiled for the machine that builds them (``-march=native``), because
fastconv is installed from source on the machine that runs it; set
``FASTCONV_MARCH=x86-64-v3`` (or any gcc ``-march`` value) to build a portable binary.
"""

import glob
import os
import re

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

march = os.environ.get("FASTCONV_MARCH", "native")
# -Wall -Wextra: the kernels' own C and the code Cython generates for them compile without a
# warning (no -Wno-... is needed: keep it that way)
compile_args = ["-Wall", "-Wextra", "-O3", f"-march={march}", "-fopenmp", "-ffp-contract=fast"]
if os.environ.get("FASTCONV_WERROR"):  # CI (.ci/run): a new warning fails the build
    compile_args.append("-Werror")
link_args = ["-fopenmp"]


def _depends(path, seen=None):
    """The headers and .pxi files a kernel source includes, recursively: a changed header
    rebuilds only the extensions that use it."""
    seen = set() if seen is None else seen
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for name in re.findall(r'^\s*(?:include|cdef extern from|#include)\s+"([^"]+)"', text, re.M):
        dep = os.path.join("kernels", name)
        if dep not in seen and os.path.exists(dep):
            seen.add(dep)
            _depends(dep, seen)
    return sorted(seen)


extensions = [
    Extension(
        "fastconv.kernels." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[np.get_include(), "kernels"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # the C cores live in headers: a changed header must rebuild the extension
        depends=_depends(path),
    )
    for path in sorted(glob.glob("kernels/*.pyx"))
]

setup(
    packages=["fastconv", "fastconv.bench", "fastconv.kernels"],
    package_dir={"fastconv.kernels": "kernels"},
    package_data={"fastconv.kernels": ["*.pxd", "*.pxi", "*.h"], "fastconv.bench": ["suites/*.txt"]},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False},
    ),
)
