"""The sort-free mini-batch draw of a swept training run (`nd.sweeps.sample_without_replacement`)
takes exactly `jax.random.choice(key, n, (k,), replace=False)`'s indices."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from neurodyn.sweeps import _first_k_by_sort_key


@pytest.mark.parametrize("n,k", [(204, 16), (10, 10), (7, 1), (1625, 64), (1626, 8), (100, 65), (5, 0)])
def test_sample_without_replacement_is_jax_choice_bit_for_bit(n, k):
    keys = jr.split(jr.PRNGKey(3), 40)
    ours = jax.jit(jax.vmap(lambda key: nd.sweeps.sample_without_replacement(key, n, k)))(keys)
    ref = jax.vmap(lambda key: jr.choice(key, n, (k,), replace=False))(keys)
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    one = nd.sweeps.sample_without_replacement(keys[0], n, k)  # unbatched, new-style keys too
    np.testing.assert_array_equal(np.asarray(one), np.asarray(ref[0]))
    typed = jr.key(5)
    np.testing.assert_array_equal(
        np.asarray(nd.sweeps.sample_without_replacement(typed, n, k)),
        np.asarray(jr.choice(typed, n, (k,), replace=False)),
    )


def test_first_k_by_sort_key_breaks_ties_like_a_stable_sort():
    # Random 32-bit keys almost never tie; these do, at 0, in the middle and at the maximum.
    top = np.iinfo(np.uint32).max
    rng = np.random.default_rng(0)
    cases = [
        np.array([5, 3, 5, 3, top, 0, top, 5, 0, 3], np.uint32),
        np.full(9, top, np.uint32),
        rng.integers(0, 4, size=50).astype(np.uint32),
        np.concatenate([rng.integers(top - 3, top, size=20, endpoint=True), [0, 0]]).astype(np.uint32),
    ]
    for bits in cases:
        want = np.argsort(bits, kind="stable")
        for k in (1, len(bits) // 2, len(bits)):
            got = jax.jit(_first_k_by_sort_key, static_argnums=1)(jnp.asarray(bits), k)
            np.testing.assert_array_equal(np.asarray(got), want[:k])
            kv = jax.lax.sort_key_val(jnp.asarray(bits), jnp.arange(len(bits)))[1][:k]
            np.testing.assert_array_equal(np.asarray(got), np.asarray(kv))


def test_sample_without_replacement_rejects_too_many():
    with pytest.raises(ValueError):
        nd.sweeps.sample_without_replacement(jr.PRNGKey(0), 4, 5)
