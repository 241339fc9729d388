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
