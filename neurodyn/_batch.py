"""The gradient of a batch: states per example, ONE reverse pass for the parameters."""

from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, Shaped

from ._custom_types import Grads, Info
from ._dynamics import aval_key, structure_key
from ._misc import all_finite, BoundedCache, cache_key, entry_jit, tree_dtype
from ._objectives import AbstractObjective, StepWeightedTargets, Trajectory
from ._options import check_option_names
from ._outcome import flag_failure, flag_nonfinite, RESULTS
from .estimators import AbstractEstimator, BPTT, check_estimator
from .networks import AbstractNetwork


@eqx.filter_custom_vjp
def _batch_estimate(params, static, xs, ys, weights, objective, estimator, opts):
    net = eqx.combine(params, static)
    return estimator.batch_value_and_grad(net, xs, ys, weights, objective, opts)


@_batch_estimate.def_fwd
def _batch_estimate_fwd(perturbed, params, static, xs, ys, weights, objective, estimator, opts):
    del perturbed
    net = eqx.combine(params, static)
    loss, grads, info = estimator.batch_value_and_grad(net, xs, ys, weights, objective, opts)
    # The batch gradient is one parameter-sized pytree: it is the residual, and the
    # backward pass only scales it (no per-example arrays are kept).
    return (loss, grads, info), grads


@_batch_estimate.def_bwd
def _batch_estimate_bwd(grads, g_out, perturbed, params, static, xs, ys, weights, objective, estimator, opts):
    del perturbed, params, static, xs, ys, weights, objective, estimator, opts
    g_loss, g_grads, _ = g_out
    if any(leaf is not None for leaf in jtu.tree_leaves(g_grads, is_leaf=lambda z: z is None)):
        raise ValueError(
            "Differentiating through the `grads` returned by nd.batch_value_and_grad is not "
            "supported: the estimators are first-order. Differentiate the returned loss "
            "instead (jax.grad of it gives the estimator's gradient)."
        )
    if g_loss is None:
        return jtu.tree_map(jnp.zeros_like, grads)
    return jtu.tree_map(lambda g: jnp.asarray(g_loss, g.dtype) * g, grads)


@entry_jit
def _batch_value_and_grad(net, xs, ys, weights, objective, estimator, opts):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    dtype = tree_dtype(net)
    B = xs.shape[0]
    if weights is None:
        weights = jnp.full((B,), 1.0 / B, dtype)
        valid = jnp.asarray(True)
    elif weights.ndim == 2:
        # Per example and time (a Trajectory): the mean over the batch of each example's
        # step-weighted loss; the weights travel with the targets into the estimators.
        step_weights = weights.astype(dtype)
        valid = jnp.all(step_weights >= 0) & jnp.all(jnp.isfinite(step_weights))
        keep = jnp.any(step_weights > 0, axis=1)
        xs = jnp.where(keep.reshape((-1,) + (1,) * (xs.ndim - 1)), xs, jnp.zeros((), xs.dtype))
        ys = jnp.where(keep.reshape((-1,) + (1,) * (ys.ndim - 1)), ys, jnp.zeros((), ys.dtype))
        ys = StepWeightedTargets(ys, jnp.where(valid, step_weights, 0))
        weights = jnp.full((B,), 1.0 / B, dtype)
    else:
        weights = weights.astype(dtype)
        total = jnp.sum(weights)
        valid = jnp.all(weights >= 0) & (total > 0) & jnp.isfinite(total)
        weights = weights / jnp.where(valid, total, 1)
        # A masked (padded) example is replaced by zeros: 0 x NaN is NaN in a reverse pass,
        # so its data must not enter at all.
        keep = weights > 0
        xs = jnp.where(keep.reshape((-1,) + (1,) * (xs.ndim - 1)), xs, jnp.zeros((), xs.dtype))
        ys = jnp.where(keep.reshape((-1,) + (1,) * (ys.ndim - 1)), ys, jnp.zeros((), ys.dtype))
    loss, grads, info = _batch_estimate(params, static, xs, ys, weights, objective, estimator, opts)
    # Per example: a non-finite loss or state is never a success; a non-finite batch
    # gradient cannot be attributed to one example, so every example says so.
    grads_ok = all_finite(grads)

    def flag(i):
        i = flag_nonfinite(i["loss"], None, i)
        i = flag_failure(i, grads_ok, RESULTS.nonfinite_gradient)
        return flag_failure(i, valid, RESULTS.invalid_parameter)

    info = jax.vmap(flag)(info)
    return loss, grads, info


# Signatures (network structure, objective, data shapes and dtypes) whose one-example
# checks passed, with the dtypes the data is cast to.
_CHECKED = BoundedCache(4096)


def check_batch(net, objective, xs, ys, weights):
    if not isinstance(xs, jax.Array):  # arrays and tracers as they are
        xs = jnp.asarray(xs)
    if not isinstance(ys, jax.Array):
        ys = jnp.asarray(ys)
    if xs.ndim == 0 or ys.ndim == 0 or xs.shape[0] != ys.shape[0]:
        raise ValueError(
            f"nd.batch_value_and_grad takes a batch along the leading axis of xs and ys; got "
            f"xs {xs.shape} and ys {ys.shape}, whose leading axes differ. For one example use "
            "nd.value_and_grad."
        )
    B = xs.shape[0]
    if B == 0:
        raise ValueError("nd.batch_value_and_grad got an empty batch (leading axis of length 0).")
    integer = jnp.issubdtype(ys.dtype, jnp.integer)

    # The one-example checks (shapes, dtypes, class-index ranges) on the examples holding
    # the smallest and largest targets, which covers every index range check.
    def check_examples():
        picks = {0}
        if integer and ys.size and not isinstance(ys, jax.core.Tracer):
            flat = np.asarray(ys).reshape(B, -1)
            picks |= {int(np.argmin(np.min(flat, 1))), int(np.argmax(np.max(flat, 1)))}
        for i in sorted(picks):
            try:
                x0, y0 = type(objective).check_data(objective, net, xs[i], ys[i])
            except ValueError as e:
                raise ValueError(f"example {i} of the batch: {e}") from None
        return x0.dtype, y0.dtype

    # With float targets every check is structural: a signature that passed once passes
    # again, and repeating them (device slices, a trace of `init_state`) cost half a
    # millisecond per call, more than the benchmark's whole batch gradient. Class indices
    # are checked by value on every call.
    signature = None if integer else cache_key(lambda: (structure_key(net), objective, aval_key(xs), aval_key(ys)))
    x_dtype, y_dtype = _CHECKED.get(signature, check_examples)
    if weights is not None:
        if not isinstance(weights, jax.Array):
            weights = jnp.asarray(weights)
        trajectory = isinstance(objective, Trajectory)
        per_time = trajectory and weights.shape == (B, len(objective.ts))
        if weights.shape != (B,) and not per_time:
            also = f" or ({B}, {len(objective.ts)}), one per example and time" if trajectory else ""
            raise ValueError(f"weights has shape {weights.shape}; expected ({B},), one per example{also}.")
        if not isinstance(weights, jax.core.Tracer):
            w = np.asarray(weights, np.float64)
            if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
                raise ValueError(
                    "weights must be finite and >= 0 with a positive sum (0 masks a padded "
                    f"example{' or time' if per_time else ''}), got {w.ravel().tolist()[:8]}..."
                )
    # (`astype` to the same dtype still costs a dispatch per call.)
    xs = xs if xs.dtype == x_dtype else xs.astype(x_dtype)
    ys = ys if ys.dtype == y_dtype else ys.astype(y_dtype)
    return xs, ys, weights


def batch_value_and_grad(
    net: AbstractNetwork,
    xs: Real[ArrayLike, "B *T n_in"],
    ys: Shaped[ArrayLike, "B ..."],
    *,
    objective: AbstractObjective,
    estimator: AbstractEstimator = BPTT(),
    weights: Real[ArrayLike, " B *T"] | None = None,
    **options: Any,
) -> tuple[Float[Array, ""], Grads, Info]:
    r"""The mean loss of a batch and its gradient `dl/dw`, by the chosen estimator, in one
    reverse pass. This is the way to train on a batch.

    Each estimator solves its states for every example (vmapped), then forms the parameter
    gradient of the batch as ONE reverse pass with the parameters shared across the batch:
    RBP and EP differentiate the surrogate `sum_b l_b + v_b . F(r_b)` (RBP) or the nudged
    energies (EP) at the solved states, BPTT reverses the vmapped solve, so every weight
    gradient is a matrix product over the batch (`R^T G`) rather than B per-example outer
    products and a reduction. RTRL's gradient is a contraction of each example's own
    sensitivities, averaged with one GEMV.

    **Arguments:**

    - `net`: a network (`nd.networks.*`).
    - `xs`: the inputs, `(B, n_in)` for `nd.SteadyState`, `(B, T, n_in)` for `nd.Trajectory`.
    - `ys`: the targets, `(B, n_out)` / `(B, T, n_out)`, or class indices `(B,)` / `(B, T)`.
    - `objective`, `estimator`: as for `nd.value_and_grad`.
    - `weights`: optional per-example weights `(B,)`, `>= 0` with a positive sum: the loss is
      `sum_b w_b l_b / sum_b w_b`. Zero masks a padded example: its `x` and `y` are
      replaced by zeros before solving (so even NaN data does not enter), and its `info`
      describes that zero example. For a `nd.Trajectory`, weights `(B, T)` are per example
      and time (sequences whose loss counts at their own steps, e.g. the recall steps of a
      copy task): the loss is `mean_b sum_k alpha_k w_bk l(readout(r_b(t_k)), y_bk)`, the
      mean of the per-example trajectory losses with `alpha_k w_bk` as their weights; an
      example whose weights are all zero is masked.
    - `solver`, `dt0`, `rtol`, `atol`, `max_steps`, `relaxation`: integration options.

    **Returns:**

    `(loss, grads, info)`: `loss` the (weighted) mean over the batch, `grads` its gradient
    (the structure of `eqx.filter(net, eqx.is_inexact_array)`), `info` per example (each
    entry with a leading batch axis; `converged`, `steps`, `result`, ...). A non-finite
    loss, state or gradient is reported there (`RESULTS.nonfinite_gradient`), never as a
    success.

    `jax.grad` of the returned `loss` gives `grads` (a batch-level custom VJP); the call is
    `jax.jit`-friendly and can be vmapped over a sweep axis (networks, estimator fields,
    data). `nd.value_and_grad` is the one-example form: the mean of its gradients over the
    batch equals this `grads`.
    """
    check_option_names(options)
    check_estimator(estimator, objective)
    # Called through their classes: equinox wraps each method access on a Module in a new
    # `BoundMethod` Module, tens of microseconds per top-level call for nothing.
    xs, ys, weights = check_batch(net, objective, xs, ys, weights)
    opts = type(objective).options(objective, tree_dtype(net), **options)
    return _batch_value_and_grad(net, xs, ys, weights, objective, estimator, opts)
