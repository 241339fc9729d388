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
from ._base import AbstractEstimator


class BPTT(AbstractEstimator):
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

    def value_and_grad(self, net, x, y, objective, options):
        if isinstance(objective, SteadyState):
            fn = self._steady_state
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
