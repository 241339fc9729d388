import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree


class AbstractSensitivity(eqx.Module):
    r"""How RTRL propagates the sensitivities `p = dr/dw` along `dp/dt = J(r) p + dF/dw`.

    `p` is a pytree with the structure of the parameters, each leaf of shape
    `(n, *w_leaf.shape)` (a leading state axis): `p[i, ...] = dr_i / dw_leaf[...]`. A
    strategy decides which entries of `p` are kept (`mask`) and how `J p` is formed
    (`propagate`); the estimator adds the immediate term `dF/dw` and steps the joint
    system `(r, p)` with the diffrax solver.
    """

    @abc.abstractmethod
    def mask(self, immediate: Callable[[int], PyTree[Array]]) -> PyTree[Array] | None:
        """The kept entries of `p` as a boolean pytree shaped like `p`, or None for all.

        **Arguments:**

        - `immediate`: `i -> dF/dw` at the `i`-th random state and input (a pytree shaped
          like `p`), from which a strategy reads the sparsity of the immediate Jacobian.
        """

    @abc.abstractmethod
    def propagate(self, jvp: Callable[[Array], Array], r: Array, p: PyTree[Array]) -> PyTree[Array]:
        """`J p`, possibly approximated, with `jvp: v -> J(r) v` the linearised vector field."""


def jvp_columns(jvp: Callable[[Array], Array], p: PyTree[Array]) -> PyTree[Array]:
    """`J p` exactly: the JVP `v -> J v` vmapped over the parameter axes of every leaf.

    XLA turns the vmapped linear map into one `(n, n) x (n, m_leaf)` product per leaf for
    dense networks (O(n^2 m) flops in all), and keeps sparse structure where F has it."""

    def leaf(a):
        n = a.shape[0]
        cols = a.reshape(n, -1)
        return jax.vmap(jvp, in_axes=1, out_axes=1)(cols).reshape(a.shape)

    return jtu.tree_map(leaf, p)


def jacobian_diagonal(jvp: Callable[[Array], Array], r: Array) -> Array:
    """`diag(J)` from `n` JVPs with the unit vectors: O(n cost(F)) time, O(n^2) memory.

    (A matrix-free network cannot give its diagonal more cheaply in general.)"""
    n = r.shape[0]
    columns = jax.vmap(jvp)(jnp.eye(n, dtype=r.dtype))  # row i = J e_i
    return jnp.diagonal(columns)


def scale_rows(d: Array, p: PyTree[Array]) -> PyTree[Array]:
    """`diag(d) p`: every leaf's state axis scaled by `d`."""

    def leaf(a):
        return a * d.reshape((d.shape[0],) + (1,) * (a.ndim - 1))

    return jtu.tree_map(leaf, p)
