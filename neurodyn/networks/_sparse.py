"""Sparse connectivity: a weight matrix stored as its nonzero values plus integer indices.

The values are the parameter leaf (inexact, differentiated); the indices are integer arrays
(not inexact, so never differentiated nor updated by an optimiser). A product is a gather
`v[cols]`, a multiply and a scatter-add into the rows: O(nnz) in the forward pass, and in its
VJP and JVP alike (the transpose of a gather is a scatter-add and vice versa), with no
`n x n` array anywhere.

The connectivity is fixed at construction (a NumPy mask), so it must be concrete: build the
network outside `jit`, as any network.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


def check_density(density: float, mask) -> None:
    if mask is not None and density != 1:
        raise ValueError(
            f"Pass either `density` or `mask`, not both (got density={density} and a mask): "
            "the mask already fixes which connections exist."
        )
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1] (1 = dense), got density={density}.")


def random_mask(key, n: int, density: float, *, symmetric: bool = False) -> np.ndarray:
    """A boolean `(n, n)` mask, each entry present with probability `density`.

    With `symmetric=True` the strict upper triangle is drawn and mirrored (zero diagonal)."""
    m = np.asarray(jr.uniform(key, (n, n))) < density
    if symmetric:
        m = np.triu(m, 1)
        m = m | m.T
    return m


def as_mask(mask, n: int, *, symmetric: bool = False, who: str = "network") -> np.ndarray:
    """Validates a user mask: concrete, `(n, n)`, and for energy networks symmetric with a
    zero diagonal (so that `F = -dE/dr` keeps a symmetric Jacobian)."""
    try:
        m = np.asarray(mask)
    except Exception as e:  # a tracer: the connectivity must be known when building
        raise ValueError(
            f"{who} mask must be a concrete (n, n) array (NumPy or a non-traced jax array): "
            "build the network outside jit."
        ) from e
    if m.shape != (n, n):
        raise ValueError(f"{who} mask must have shape ({n}, {n}), got {m.shape}.")
    m = m.astype(bool)
    if symmetric:
        if np.any(np.diag(m)):
            raise ValueError(
                f"{who} mask must have a zero diagonal (no self-connections): pass `mask & ~np.eye(n, dtype=bool)`."
            )
        if not np.array_equal(m, m.T):
            raise ValueError(
                f"{who} mask must be symmetric (the energy couples i and j both ways): pass `mask | mask.T`."
            )
    return m


def indices(mask: np.ndarray, *, upper: bool = False) -> jax.Array:
    """The `(2, nnz)` row/column indices of a mask, sorted by row (its strict upper triangle
    if `upper`)."""
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
    """The dense `(n, n)` matrix (for inspection and small-n references only)."""
    W = jnp.zeros((n, n), values.dtype).at[index[0], index[1]].set(values)
    return W + W.T if symmetric else W
