"""Build the one compiled helper: cpumap._atomics (fences, atomics and futex on shared memory).

Everything else is pure Python; see src/cpumap/_atomics.c for why this part cannot be.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cpumap._atomics",
            sources=["src/cpumap/_atomics.c"],
            extra_compile_args=["-O2", "-std=c11"],
        )
    ]
)
