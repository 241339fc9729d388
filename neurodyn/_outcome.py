"""Outcomes of the solves, reported in ``info["result"]`` (diffrax's RESULTS pattern)."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Inexact, PyTree

from ._misc import all_finite


class RESULTS(eqx.Enumeration):
    """Why a relaxation, rollout or adjoint solve stopped. The value is the message."""

    successful = ""
    max_steps_reached = (
        "The relaxation reached `max_steps` before `||F(r)|| < atol + rtol ||r||`. "
        "Increase `max_steps`, loosen `rtol`/`atol`, or lower the network's gain."
    )
    nonfinite = "The state became non-finite (inf or NaN): the dynamics diverged. Lower `dt0` or the network's gain."
    adjoint_max_steps_reached = (
        "The adjoint solve did not reach its tolerance within its iteration budget (or "
        "stopped early: its residual stopped falling, or at its rate it would not have)."
    )
    unstable_equilibrium = (
        "The equilibrium is not stable: the adjoint iteration diverged or the leading "
        "eigenvalue of J = dF/dr has a non-negative real part."
    )
    stagnated = (
        "The relaxation stopped early: its residual stopped falling (it fell by less than "
        "1% over the strategy's `patience` convergence checks), so it oscillates or sits on "
        "a rounding floor above the tolerance; or it falls too slowly to reach the tolerance "
        "within `max_steps` at its rate (an equilibrium that is barely stable). Lower `dt0` "
        "or the learning rate (training); "
        "with a tolerance below the matmul rounding (TF32 on a GPU: the defaults account for "
        "it) loosen `rtol` or set JAX_DEFAULT_MATMUL_PRECISION=highest."
    )
    nonfinite_gradient = (
        "The loss or the gradient is not finite (inf or NaN) at a finite state. Likely "
        "causes: NaN or inf in the parameters, the inputs or the targets, or a class index "
        "outside [0, n_out) under jit (where the data cannot be checked)."
    )
    invalid_parameter = (
        "An estimator parameter given as data (traced, e.g. in a sweep) is out of its valid "
        "range, so the gradient is meaningless: EP needs a finite beta > 0."
    )


def flag_failure(
    info: dict[str, Any], ok: bool | Bool[Array, "..."], result: RESULTS, *, override: bool = False
) -> dict[str, Any]:
    """`info` with `converged = False` and `result = result` where `ok` is False (per
    example: works under `jit` and `vmap`, never raises). Unless `override`, an earlier
    failure's result is kept: the first reason found is the one reported."""
    ok = jnp.all(jnp.asarray(ok))
    if override:
        new_result = RESULTS.where(ok, info["result"], result)
    else:
        already_failed = info["result"] != RESULTS.successful
        new_result = RESULTS.where(ok | already_failed, info["result"], result)
    return dict(info, converged=info["converged"] & ok, result=new_result)


def flag_nonfinite(loss: Inexact[Array, "..."], grads: PyTree[Array], info: dict[str, Any]) -> dict[str, Any]:
    """`info` with `converged = False` and `result = RESULTS.nonfinite_gradient` where the
    `loss` or any leaf of `grads` is not finite: a non-finite gradient is never a success.

    An earlier failure's `result` (e.g. the relaxation's `nonfinite`) is kept, with one
    exception: a non-finite loss at a converged forward state (`info["forward_converged"]`,
    else `info["converged"]`) comes from the readout's parameters or the target, upstream of
    the later solves, whose failures (an adjoint or nudged phase gone NaN) it causes; then
    the result names it. Per example; `jit`/`vmap`-friendly. Call it on every
    `(loss, grads, info)` an estimator returns."""
    loss_ok = jnp.all(jnp.isfinite(loss))
    forward_ok = info.get("forward_converged", info["converged"])
    info = flag_failure(info, loss_ok | ~forward_ok, RESULTS.nonfinite_gradient, override=True)
    return flag_failure(info, loss_ok & all_finite(grads), RESULTS.nonfinite_gradient)
