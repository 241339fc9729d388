import equinox as eqx
import jax
import jax.numpy as jnp

from .._dynamics import (
    integrate_interval,
    relax_loop,
    rollout_loop,
    solver_init,
    solver_step,
    time_grid,
    tree_where,
)
from .._objectives import SteadyState, Trajectory
from .._outcome import RESULTS
from ._base import AbstractGradientResidualEstimator


class BPTT(AbstractGradientResidualEstimator):
    r"""Backpropagation through time: reverse-mode differentiation of the discretised solve.

    For a trajectory objective it differentiates the fixed-step rollout; for a steady-state
    objective it differentiates the relaxation loop itself. The gradient is exact for the
    discretised system (seed 001: `s(t) = D(t)(dR/dx(t) + W^T s(t+1))`,
    `dW = sum_t s(t) x(t-1)^T` for the Euler dt = 1 network).

    Cost: time `O(n^2 T + n m T)` (one forward and one backward sweep), memory `O(n T)` for
    the stored states, or `O(n c)` with `c` checkpoints and extra recomputation.

    **Arguments:**

    - `truncation`: `h`, the depth of truncated BPTT (seed 004's epochwise truncation). For a
      trajectory each loss term `l_k` backpropagates through the last `h` intervals only
      (all `T` terms in parallel, `O(T h)` work). For a steady state the gradient flows
      through the last `h` solver steps from `r*` (a `h`-term Neumann series of the adjoint).
      `None` (default) is full BPTT.
    - `checkpoints`: `None` (default) stores every state for the backward pass (fastest);
      an integer `c` keeps `c` checkpoints and recomputes the rest (memory against time).
      For a steady state the relaxation loop is always checkpointed, `None` letting equinox
      pick the number from `max_steps`.

    !!! warning

        Differentiating through a steady-state relaxation costs memory and time in the
        number of relaxation steps; `nd.RBP()` gets the same gradient at the cost of one
        adjoint solve once the relaxation has converged.
    """

    truncation: int | None = eqx.field(static=True, default=None)
    checkpoints: int | None = eqx.field(static=True, default=None)
    objectives = (SteadyState, Trajectory)

    def __check_init__(self):
        if self.truncation is not None and self.truncation < 1:
            raise ValueError(f"BPTT truncation must be a positive integer or None, got {self.truncation}.")
        if self.checkpoints is not None and self.checkpoints < 1:
            raise ValueError(f"BPTT checkpoints must be a positive integer or None, got {self.checkpoints}.")

    def _loss_grads_info(self, net, x, y, objective, options):
        if isinstance(objective, SteadyState):
            fn = self._steady_state
        elif self.truncation is None and self.checkpoints is None:
            grid = time_grid(objective.ts, options.dt0, options.max_steps, x.dtype)
            return _two_phase_trajectory(net, x, y, objective, options, grid, net.init_state(x[0]))
        else:
            fn = self._trajectory
        (loss, info), grads = eqx.filter_value_and_grad(fn, has_aux=True)(
            net, x, y, objective, options
        )
        return loss, grads, info

    def _steady_state(self, net, x, y, objective, options):
        r0 = net.init_state(x)
        if self.truncation is None:
            r, info = relax_loop(
                net, x, r0, options, kind="checkpointed", checkpoints=self.checkpoints
            )
            return objective.value(net, r, y), info
        r_star, info = relax_loop(jax.lax.stop_gradient(net), x, r0, options)
        r_star = jax.lax.stop_gradient(r_star)
        solver, dt = options.solver, options.dt0
        state = solver_init(solver, net, r_star, x, 0.0, dt)

        def step(carry, j):
            r, s = carry
            return solver_step(solver, net, r, x, j * dt, dt, s, False), None

        (r, _), _ = jax.lax.scan(step, (r_star, state), jnp.arange(self.truncation, dtype=r_star.dtype))
        return objective.value(net, r, y), info

    def _trajectory(self, net, x, y, objective: Trajectory, options):
        dtype = x.dtype
        grid = time_grid(objective.ts, options.dt0, options.max_steps, dtype)
        r0 = net.init_state(x[0])
        if self.truncation is None:
            rs, info = rollout_loop(net, x, grid, r0, options.solver, checkpoints=self.checkpoints)
            return objective.value(net, rs, y), info
        rs_free, info = rollout_loop(jax.lax.stop_gradient(net), x, grid, r0, options.solver)
        rs_free = jax.lax.stop_gradient(rs_free)
        h, T = self.truncation, x.shape[0]
        # Interval k starts from r(ts[k-1]): r0 for k = 0, else the (k-1)-th saved state.
        starts = jnp.concatenate([r0[None], rs_free[:-1]])

        def truncated_state(k):
            first = k - h + 1

            def seg(r, j):
                idx = first + j
                i = jnp.clip(idx, 0, T - 1)
                r_new = integrate_interval(
                    options.solver, net, r, x[i], grid.t0s[i], grid.dts[i], grid.n_sub
                )
                return tree_where(idx >= 0, r_new, r), None

            r_start = starts[jnp.clip(first, 0, T - 1)]
            r_k, _ = jax.lax.scan(seg, r_start, jnp.arange(h))
            return r_k

        rs = jax.vmap(truncated_state)(jnp.arange(T))
        return objective.value(net, rs, y), info


def _fresh_step(solver, net, r, x, t0, dt):
    # One solver step from a freshly initialised solver state: for FSAL solvers the carried
    # first stage is recomputed, so the step is a function of `r` alone and the adjoints
    # below are exact.
    state = solver_init(solver, net, r, x, t0, dt)
    return solver_step(solver, net, r, x, t0, dt, state, True)[0]


def _two_phase_trajectory(net, x, y, objective, options, grid, r0):
    """Full BPTT of a trajectory in two phases, the fast path of `BPTT()`.

    Reverse mode through a scan accumulates the parameter gradient with an outer product
    at every step, which dominates the cost. Here the parameters are held constant in the
    scan and a zero probe `e_i` is added to every step's output: the gradient with respect
    to the probes is the adjoint `a_i = dl/dr_i` at every step (one reverse sweep over the
    state only). The parameter gradient is then one batched VJP of all steps at once,
    `sum_i a_i^T d step(r_{i-1})/dw`, which XLA runs as large matrix products.
    The result equals reverse mode through the loop (tests check it to rounding).
    """
    solver, n_sub = options.solver, grid.n_sub
    frozen = jax.lax.stop_gradient(net)
    T = x.shape[0]
    sub_t = jnp.arange(n_sub, dtype=r0.dtype)

    def run(probes):
        def interval(r, inp):
            xk, t0, dt, e_k = inp

            def sub(r, inp):
                j, e = inp
                return _fresh_step(solver, frozen, r, xk, t0 + j * dt, dt) + e, r

            r1, r_pre = jax.lax.scan(sub, r, (sub_t, e_k))
            return r1, (r_pre, r1)

        _, (r_pre, r_end) = jax.lax.scan(interval, r0, (x, grid.t0s, grid.dts, probes))
        return r_pre, r_end

    probes = jnp.zeros((T, n_sub) + r0.shape, r0.dtype)
    (r_pre, r_end), run_vjp = jax.vjp(run, probes)
    finite = jnp.all(jnp.isfinite(r_end))
    info = dict(
        result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite),
        converged=finite,
        steps=jnp.asarray(n_sub * T),
    )
    loss, (g_readout, g_states) = eqx.filter_value_and_grad(
        lambda net_r: objective.value(net_r[0], net_r[1], y)
    )((net, r_end))
    (adjoints,) = run_vjp((jnp.zeros_like(r_pre), g_states))

    def all_steps(net):
        def one(r, xk, t, dt):
            return _fresh_step(solver, net, r, xk, t, dt)

        ts = grid.t0s[:, None] + sub_t[None, :] * grid.dts[:, None]
        dts = jnp.broadcast_to(grid.dts[:, None], (T, n_sub))
        xk = jnp.broadcast_to(x[:, None], (T, n_sub) + x.shape[1:])
        def flat(a):
            return a.reshape((T * n_sub,) + a.shape[2:])
        return jax.vmap(one)(flat(r_pre), flat(xk), flat(ts), flat(dts))

    _, steps_vjp = eqx.filter_vjp(all_steps, net)
    (g_dynamics,) = steps_vjp(adjoints.reshape((T * n_sub,) + r0.shape))
    grads = jax.tree.map(_add_maybe_none, g_readout, g_dynamics, is_leaf=lambda z: z is None)
    return loss, grads, info


def _add_maybe_none(a, b):
    # Gradients of non-differentiable leaves (integer indices, static parts) are None.
    if a is None:
        return b
    if b is None:
        return a
    return a + b
