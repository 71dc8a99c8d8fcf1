"""Build script: compiles the Cython kernels in ``kernels/`` (with OpenMP) and installs
``kernels/`` as the subpackage ``fastconv.kernels``.

The kernels are compiled for the machine that builds them (``-march=native``), because
fastconv is installed from source on the machine that runs it; set
``FASTCONV_MARCH=x86-64-v3`` (or any gcc ``-march`` value) to build a portable binary.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

march = os.environ.get("FASTCONV_MARCH", "native")
compile_args = ["-O3", f"-march={march}", "-fopenmp", "-ffp-contract=fast"]
link_args = ["-fopenmp"]

extensions = [
    Extension(
        "fastconv.kernels." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[np.get_include(), "kernels"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # the C cores live in headers: a changed header must rebuild the extension
        depends=sorted(glob.glob("kernels/*.h") + glob.glob("kernels/*.pxi")),
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
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
    ),
)
