"""The process's memory allocator, for XLA:CPU programs with large temporaries."""

import ctypes
import os
import platform
import sys


# glibc's `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# (parameter, value, the environment variable that sets it at startup)
_SETTINGS = (
    (_M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
    (_M_MMAP_THRESHOLD, 1 << 30, "MALLOC_MMAP_THRESHOLD_"),
    (_M_TRIM_THRESHOLD, (1 << 31) - 1, "MALLOC_TRIM_THRESHOLD_"),  # the largest C int
)


def tune_cpu_allocator() -> bool:
    """Keeps freed large blocks in the process for the next call (glibc on Linux), so that
    an XLA:CPU program whose temporaries are large does not take fresh pages from the
    kernel on every call.

    XLA:CPU allocates a program's temporaries, in one block, on every call. glibc serves a
    block above its mmap threshold (at most 32 MB by default), or one larger than a worker
    thread's arena can hold (64 MB), with a fresh mapping, and unmaps it when it is freed:
    every page the program touches then faults, on every call, and each kernel runs slower.
    Steady-state BPTT stores each step in buffers sized for long relaxations; at B = 128,
    n = 512 they take 211 MB, and its gradient of a 6-step relaxation took 17-20 ms by
    default against 14-15.5 ms after this call (three alternating processes each, the same
    machine); RBP's, with 3 MB of temporaries, was unchanged.

    This sets `M_ARENA_MAX = 1` (XLA's worker threads allocate from the main heap), an mmap
    threshold of 1 GiB and a trim threshold of 2 GiB, leaving alone any of them set by
    their environment variable (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
    `MALLOC_TRIM_THRESHOLD_`). The cost: memory freed by a program stays with the process
    (up to 2 GiB of free heap) rather than going back to the OS, and every thread shares
    one arena: for programs with small temporaries the effect was within the machine's
    run-to-run spread (2-5% slower on average over three pairs of processes), so it is not
    a default. Call it before the first JAX computation: the arena limit holds only for
    threads that have not allocated yet. neurodyn never calls it on import;
    `python -m experiments.benchmark --tune-allocator` runs the benchmark with it.

    **Returns:** whether every setting was applied (`False` where the C library is not
    glibc, e.g. macOS or musl; there, nothing changes).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = [mallopt(param, value) == 1 for param, value, env in _SETTINGS if env not in os.environ]
    return all(applied)
