import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


_counter = [0]


@pytest.fixture
def getkey():
    """A fresh PRNG key at each call, deterministic across runs."""

    def _getkey():
        _counter[0] += 1
        return jr.PRNGKey(_counter[0])

    return _getkey


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Frees each test module's compiled executables when it ends. XLA's CPU backend maps
    every executable's code into memory; the whole suite compiles thousands, which passed
    the kernel's limit on memory mappings (vm.max_map_count = 65530) and segfaulted inside
    the compiler late in the run."""
    yield
    jax.clear_caches()
