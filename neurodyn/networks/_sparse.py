"""Sparse connectivity: a weight matrix stored as its nonzero values plus integer indices.

The values are the parameter leaf (inexact, differentiated); the indices are integer arrays
(not inexact, so never differentiated). Products cost O(nnz) in the forward pass, its VJP
and its JVP alike.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


def random_mask(key, n: int, density: float, *, symmetric: bool = False) -> np.ndarray:
    """A boolean `(n, n)` mask with about `density * n^2` entries (zero diagonal if symmetric)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}.")
    m = np.asarray(jr.uniform(key, (n, n))) < density
    if symmetric:
        m = np.triu(m, 1)
        m = m | m.T
    return m


def indices(mask: np.ndarray, *, upper: bool = False) -> jax.Array:
    """The `(2, nnz)` row/column indices of a mask (its strict upper triangle if `upper`)."""
    mask = np.asarray(mask, bool)
    if upper:
        mask = np.triu(mask, 1)
    rows, cols = np.nonzero(mask)
    return jnp.asarray(np.stack([rows, cols]), dtype=jnp.int32)


def matvec(values, index, v, n: int):
    """`W v` for the sparse `W` given by `values` at `index`: O(nnz)."""
    return jnp.zeros((n,), v.dtype).at[index[0]].add(values * v[index[1]])


def symmetric_matvec(values, index, v, n: int):
    """`W v` for the symmetric `W` whose strict upper triangle is `values` at `index`."""
    out = jnp.zeros((n,), v.dtype).at[index[0]].add(values * v[index[1]])
    return out.at[index[1]].add(values * v[index[0]])


def densify(values, index, n: int, *, symmetric: bool = False):
    W = jnp.zeros((n, n), values.dtype).at[index[0], index[1]].set(values)
    return W + W.T if symmetric else W
