"""The mini-batch draw of a swept training run (`nd.sweeps.sample_without_replacement`,
Floyd's algorithm): `k` distinct indices in `[0, n)`, every `k`-subset equally likely."""

import itertools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

import neurodyn as nd


@pytest.mark.parametrize("n,k", [(204, 16), (10, 10), (7, 1), (1625, 64), (100, 65), (5, 0)])
def test_sample_without_replacement_draws_distinct_indices(n, k):
    keys = jr.split(jr.PRNGKey(3), 200)
    draws = np.asarray(jax.jit(jax.vmap(lambda key: nd.sweeps.sample_without_replacement(key, n, k)))(keys))
    ref = jr.choice(keys[0], n, (k,), replace=False)
    assert draws.shape == (200, k) and draws.dtype == ref.dtype
    assert all(len(set(row)) == k for row in draws) and (draws.size == 0 or (draws.min() >= 0 and draws.max() < n))
    one = nd.sweeps.sample_without_replacement(keys[0], n, k)  # unbatched: the same draw
    np.testing.assert_array_equal(np.asarray(one), draws[0])
    typed = nd.sweeps.sample_without_replacement(jr.key(5), n, k)  # new-style keys too
    assert typed.shape == (k,) and len(set(np.asarray(typed).tolist())) == k
    if k == n:  # all of them: a permutation
        assert all(sorted(row) == list(range(n)) for row in draws)


def _p_uniform(counts):
    counts = np.asarray(counts, np.float64)
    return scipy.stats.chisquare(counts).pvalue


def test_every_subset_is_equally_likely():
    # 5 choose 2 = 10 subsets, 40 000 draws: a chi-square test of uniformity. A draw that
    # kept `t` on a collision, or drew `t` in [0, j) instead of [0, j], fails it (p < 1e-30).
    n, k, m = 5, 2, 40_000
    keys = jr.split(jr.PRNGKey(11), m)
    draws = np.asarray(jax.jit(jax.vmap(lambda key: nd.sweeps.sample_without_replacement(key, n, k)))(keys))
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), k))}
    counts = np.bincount([subsets[tuple(sorted(row))] for row in draws], minlength=len(subsets))
    assert _p_uniform(counts) > 1e-4, counts
    # The sweep's size: each of the 204 indices in k/n of the batches.
    n, k, m = 204, 16, 20_000
    keys = jr.split(jr.PRNGKey(12), m)
    draws = np.asarray(jax.jit(jax.vmap(lambda key: nd.sweeps.sample_without_replacement(key, n, k)))(keys))
    assert _p_uniform(np.bincount(draws.ravel(), minlength=n)) > 1e-4


def test_the_tests_see_a_biased_draw():
    # The same statistic on a draw that is not uniform: the first index twice as likely.
    rng = np.random.default_rng(0)
    p = np.ones(5) / 6
    p[0] = 2 / 6
    draws = [tuple(sorted(rng.choice(5, 2, replace=False, p=p))) for _ in range(40_000)]
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(5), 2))}
    counts = np.bincount([subsets[d] for d in draws], minlength=10)
    assert _p_uniform(counts) < 1e-10


def test_sample_without_replacement_rejects_too_many():
    with pytest.raises(ValueError, match="cannot take 5 of 4"):
        nd.sweeps.sample_without_replacement(jr.PRNGKey(0), 4, 5)
    assert nd.sweeps.sample_without_replacement(jnp.asarray(jr.PRNGKey(0)), 4, 4).shape == (4,)
