import os

import jax
import jax.random as jr
import pytest


# Experiments called in-process (`main(argv)`) would turn on the persistent compilation
# cache in the user's cache directory; the suite compiles as it always did.
os.environ.setdefault("NEURODYN_COMPILATION_CACHE", "off")


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the default, pyproject's addopts): one worker per core this process may use,
    by its CPU affinity and its cgroup's CPU quota (v2 or v1; a container limited to 2 cores of a
    64-core host gets 2, not 64), at most 8 (each worker holds its own compiled programs).
    Each test compiles on one core, so 2 workers on 2 cores take half the serial time.
    `-n 0` runs serially (for `--pdb`)."""
    import pathlib

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    v2, v1 = pathlib.Path("/sys/fs/cgroup/cpu.max"), pathlib.Path("/sys/fs/cgroup/cpu")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()  # "max 100000" or "200000 100000"
        else:
            quota, period = ((v1 / f).read_text().strip() for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        if quota not in ("max", "-1"):
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup CPU controller visible: the affinity alone
        pass
    return max(1, min(n, 8))


@pytest.fixture
def getkey(request):
    """A fresh PRNG key at each call. The keys of a test depend on its node id alone, not on
    which tests ran before it in the process, so they are the same in the default suite, the
    slow step, a single test run on its own, and any worker of a parallel run (`-n 2`)."""
    import zlib

    seed = zlib.crc32(request.node.nodeid.encode())
    counter = [0]

    def _getkey():
        counter[0] += 1
        return jr.fold_in(jr.PRNGKey(seed), counter[0])

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Frees each test module's compiled executables when it ends. XLA's CPU backend maps
    every executable's code into memory; the whole suite compiles thousands, which passed
    the kernel's limit on memory mappings (vm.max_map_count = 65530) and segfaulted inside
    the compiler late in the run."""
    yield
    jax.clear_caches()


def _heavy_test_ids() -> frozenset[str]:
    import pathlib

    lines = (pathlib.Path(__file__).parent / "heavy_tests.txt").read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects by the marks
def pytest_collection_modifyitems(config, items):
    """Marks `slow` the tests listed in `heavy_tests.txt` (the default suite's slowest, kept
    under 10 minutes on 2 cores); they run in CI's slow step."""
    heavy = _heavy_test_ids()
    for item in items:
        if item.nodeid in heavy:
            item.add_marker(pytest.mark.slow)
