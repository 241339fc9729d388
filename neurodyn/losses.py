"""Losses: squared error, softmax cross-entropy, L2 weight penalty.

A loss takes one prediction `p = net.readout(r)` and one target `y` and returns a scalar
(complex inside holomorphic EP, which runs the losses on complex readouts).
Targets are float vectors of the readout's shape, or (cross-entropy only) an integer class.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, Inexact, PyTree, Shaped


def squared_error(p: Inexact[Array, " k"], y: Inexact[ArrayLike, " k"]) -> Inexact[Array, ""]:
    """`l(p, y) = 1/2 ||p - y||^2`; its gradient is `p - y`."""
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            "squared_error needs float targets of the readout's shape, got an integer "
            f"target of shape {y.shape}; one-hot encode it (jax.nn.one_hot) or use "
            "nd.losses.softmax_cross_entropy."
        )
    return 0.5 * jnp.sum(jnp.square(p - y.astype(p.dtype)))


def softmax_cross_entropy(
    logits: Inexact[Array, " k"], y: Shaped[ArrayLike, " k"] | Shaped[ArrayLike, ""]
) -> Inexact[Array, ""]:
    """`l = -sum_j y_j log softmax(p)_j`; `y` is a class index or a probability vector.

    A class index outside `[0, k)` (negative ones included: no wrapping) gives a NaN loss,
    which `nd.value_and_grad` reports as `RESULTS.nonfinite_gradient` (concrete targets are
    refused earlier, by the input check)."""
    y = jnp.asarray(y)
    logp = jax.nn.log_softmax(logits)
    if jnp.issubdtype(y.dtype, jnp.integer):
        k = logp.shape[-1]
        in_range = (y >= 0) & (y < k)
        picked = -jnp.take(logp, jnp.clip(y, 0, k - 1))
        return jnp.where(in_range, picked, jnp.asarray(jnp.nan, picked.dtype))
    return -jnp.sum(y.astype(logp.dtype) * logp)


def l2_penalty(tree: PyTree, lam: float | ArrayLike) -> Float[Array, ""]:
    """`1/2 lambda ||W||_F^2` summed over the floating-point leaves of `tree` (a network,
    or the weight matrices alone)."""
    leaves = jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    if not leaves:
        return jnp.zeros(())
    total = functools.reduce(jnp.add, [jnp.sum(jnp.square(leaf)) for leaf in leaves])
    return jnp.multiply(0.5 * jnp.asarray(lam), total)


def takes_class_index(loss: object) -> bool:
    """Whether `loss` accepts integer class targets (used by the input checks)."""
    return loss is softmax_cross_entropy
