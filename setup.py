"""Build the compiled helpers: cpumap._atomics (fences, atomics and futex on shared
memory), cpumap._records (the walk over a pcap chunk's record headers) and cpumap._place
(a mapped pcap file's records copied into lent frames, SIGBUS-guarded).

Everything else is pure Python; each C file says why its part cannot be.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cpumap._atomics",
            sources=["src/cpumap/_atomics.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        Extension(
            "cpumap._records",
            sources=["src/cpumap/_records.c"],
            extra_compile_args=["-O2", "-std=c11"],
        ),
        Extension(
            "cpumap._place",
            sources=["src/cpumap/_place.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        ),
    ]
)
