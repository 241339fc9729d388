from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, Real

from ._custom_types import Grads, Info, Target
from ._misc import entry_jit, tree_dtype
from ._objectives import AbstractObjective
from ._options import check_option_names
from ._outcome import flag_nonfinite
from .estimators import AbstractEstimator, BPTT, check_estimator
from .networks import AbstractNetwork


@eqx.filter_custom_vjp
def _estimate(params, static, x, y, objective, estimator, opts):
    # The estimator computes the loss and its gradient together; this custom VJP makes
    # `jax.grad` of the returned loss give the estimator's gradient, so any estimator can
    # sit inside a larger JAX loss (penalties, batch means, optax) and `grad(vmap)` equals
    # the mean of `vmap`'d grads.
    net = eqx.combine(params, static)
    return estimator.value_and_grad(net, x, y, objective, opts)


@_estimate.def_fwd
def _estimate_fwd(perturbed, params, static, x, y, objective, estimator, opts):
    del perturbed
    net = eqx.combine(params, static)
    loss, grads, info, residuals = estimator.value_grad_and_residuals(net, x, y, objective, opts)
    return (loss, grads, info), residuals


@_estimate.def_bwd
def _estimate_bwd(residuals, g_out, perturbed, params, static, x, y, objective, estimator, opts):
    del perturbed
    g_loss, g_grads, _ = g_out
    if any(leaf is not None for leaf in jtu.tree_leaves(g_grads, is_leaf=lambda z: z is None)):
        raise ValueError(
            "Differentiating through the `grads` returned by nd.value_and_grad is not "
            "supported: the estimators are first-order. Differentiate the returned loss "
            "instead (jax.grad of it gives the estimator's gradient)."
        )
    if g_loss is None:
        return jtu.tree_map(jnp.zeros_like, params)
    net = eqx.combine(params, static)
    return estimator.grads_from_residuals(net, x, y, objective, opts, residuals, g_loss)


@entry_jit
def _value_and_grad(net, x, y, objective, estimator, opts):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    loss, grads, info = _estimate(params, static, x, y, objective, estimator, opts)
    # A non-finite loss or gradient is never a success, whatever the solves reported.
    return loss, grads, flag_nonfinite(loss, grads, info)


def value_and_grad(
    net: AbstractNetwork,
    x: Real[ArrayLike, "*T n_in"],
    y: Target,
    *,
    objective: AbstractObjective,
    estimator: AbstractEstimator = BPTT(),
    **options: Any,
) -> tuple[Float[Array, ""], Grads, Info]:
    r"""The loss and its gradient `dl/dw` for ONE example, by the chosen estimator.

    **Arguments:**

    - `net`: a network (`nd.networks.*`); `w` are its inexact-array leaves.
    - `x`: the input, `(n_in,)` for `nd.SteadyState`, `(T, n_in)` for `nd.Trajectory`.
    - `y`: the target, `(n_out,)` or `(T, n_out)` (class indices for cross-entropy).
    - `objective`: `nd.SteadyState(loss)` or `nd.Trajectory(loss, ts, weights)`.
    - `estimator`: `nd.BPTT()` (default), `nd.RBP()`, `nd.EP(beta, variant)`, `nd.RTRL()`.
    - `solver`, `dt0`, `rtol`, `atol`, `max_steps`: integration options (see `nd.relax`).

    **Returns:**

    `(loss, grads, info)`: `grads` has the structure of `eqx.filter(net, eqx.is_inexact_array)`;
    `info` holds at least `converged` (bool), `steps`, and `result`, per example.

    The call is `jax.jit`- and `jax.vmap`-friendly, and `jax.grad` of the returned `loss`
    with respect to `net` is the estimator's `grads` (a custom VJP), so the estimators drop
    into any JAX loss. `grads` itself is not differentiable (the estimators are first-order).
    Non-convergence shows in `info["converged"]`; it is never raised inside vmap.
    """
    check_option_names(options)
    check_estimator(estimator, objective)
    # Called through their classes: equinox wraps each method access on a Module in a new
    # `BoundMethod` Module, tens of microseconds per top-level call for nothing.
    x, y = type(objective).check_data(objective, net, x, y)
    opts = type(objective).options(objective, tree_dtype(net), **options)
    return _value_and_grad(net, x, y, objective, estimator, opts)
