"""The joint `(r, p)` stepper that `nd.RTRL` and `nd.online` share: the state and its
sensitivities `p = dr/dw` stepped together by a diffrax solver, in the layout of an
`nd.rtrl` sensitivity strategy (Williams & Zipser 1989)."""

import jax
import jax.numpy as jnp


def joint_step(solver, params, static, sensitivity, aux):
    """`(init, step)` for `solver` on the joint system `(r, p)`, from the strategy:
    `init(state, x, t0, dt) -> solver_state` and
    `step(state, x, t0, dt, solver_state=None) -> (state, solver_state)`, where
    `solver_state=None` starts the solver afresh (at the start of an interval, where the
    input jumps), as `nd.rollout` does."""
    return sensitivity.stepper(solver, params, static, aux)


def integrate_interval_joint(step, state, x, t0, dt, n_sub: int):
    """`(r, p)` over one interval of `n_sub` fixed steps of size `dt` with `x` held: the
    grid and solver-state handling of `nd.rollout`'s `integrate_interval`."""
    state, s = step(state, x, t0, dt)
    if n_sub == 1:
        return state

    def sub(carry, j):
        state, s = carry
        return step(state, x, t0 + j * dt, dt, s), None

    (state, _), _ = jax.lax.scan(sub, (state, s), jnp.arange(1, n_sub, dtype=dt.dtype))
    return state


def sensitivity_aux(sensitivity, params, static, n, n_in, dtype):
    """What the strategy reads from the network once per run (a mask, a pattern)."""
    return sensitivity.prepare(params, static, n, n_in, dtype)


def zero_sensitivities(sensitivity, params, n, aux):
    """`p = 0` in the strategy's layout."""
    return sensitivity.zeros(params, n, aux)


def contract(sensitivity, p, g_r, aux):
    """`g_r^T p`, the gradient through the state."""
    return sensitivity.contract(p, g_r, aux)


def report(sensitivity, p, aux, g_r=None) -> dict:
    """What the strategy reports about its current sensitivities, as scalars for an `info`
    dict (`{}` for a strategy without a `report` method; `nd.rtrl.UORO` reports its
    factor norms and, with `variance=True`, estimates of its variance)."""
    fn = getattr(sensitivity, "report", None)
    return {} if fn is None else fn(p, aux, g_r)
