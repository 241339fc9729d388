from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import RealState
from .._iterate import AbstractIterativeSolver, check_stopping_rules, iterate
from .._misc import rms_norm
from ..relaxation._backoff import Backoff, backoff_steps, start_steps
from ._base import AbstractAdjointSolve, AdjointSolution, Jacobian, MatVec, Step
from ._common import adjoint_solution, default_rtol


def _adjoint_field(t, v, args):
    matvec, g = args
    return matvec(v) + g


_TERM = diffrax.ODETerm(_adjoint_field)


class AdjointODE(AbstractAdjointSolve):
    r"""The adjoint dynamics of recurrent backpropagation (Almeida 1987; Pineda 1987), `dv/dt = v J + dl/dr` (Pineda's form),
    integrated with a diffrax solver to its own steady state `v* = -dl/dr J^-1`.

    Stops when `rms(J^T v + g) < rtol (rms(g) + rms(v)) + atol` (relative to the adjoint
    state too, as the forward relaxation's test is relative to `r`: with large weights,
    `|v| >> |g|`, float32 rounding alone leaves a residual above `rtol rms(g)`). It converges exactly when the forward
    equilibrium is stable (the eigenvalues of J have negative real part), so divergence here
    flags an unstable equilibrium. The reported `adjoint_residual` is the loop's own test
    quantity (the last step difference over the step, relative to `rms(g)`), so
    `adjoint_converged` is exactly that test.

    **Arguments:**

    - `solver`: a diffrax solver (Euler by default; with `dt0 = 1` it is the Neumann series
      with a convergence test).
    - `dt0`: the fixed step; `None` (default) takes the forward relaxation's step (`dt0`,
      or the step an `nd.relaxation.Backoff` relaxation ended with, per example), with
      which the adjoint dynamics are as stable as the forward ones (same eigenvalues).
    - `rtol`, `atol`: tolerances (`None`: by dtype).
    - `max_steps`: iteration budget, in solver steps.
    - `check_every`: solver steps per convergence test (static; default 2, as the forward
      relaxation's default): each test costs reductions and, under `vmap`, a batch-wide
      `any`; testing every other step saves that for at most one extra step.
    - `patience`, `budget_margin`: the forward relaxation's stopping rules
      (`nd.relaxation.FixedStep`), static: the solve ends, not converged, after `patience`
      checks without its residual falling by 1%, or when at its rate (a linear iteration:
      the geometric extrapolation is exact) it would need more than `budget_margin` times
      the checks its budget leaves, or when it diverges too slowly to overflow within the
      budget. In a batch, every example's loop waits for the slowest: an adjoint at a
      state that is not an equilibrium (its forward relaxation failed, so its `info`
      already says so) can diverge slowly and ran all `max_steps` before. `None` turns
      each off.
    - `backoff`: an `nd.relaxation.Backoff` whose step control the adjoint dynamics follow
      (the step shrinks, per example, where the residual stops falling), from the step
      they start at. `nd.RBP()` sets it to the forward relaxation's own when that is a
      `Backoff`: a forward relaxation that starts at its equilibrium (a zero input at a
      zero state) converges without testing its step, which the adjoint then tests.
    """

    solver: diffrax.AbstractSolver = diffrax.Euler()
    dt0: float | None = eqx.field(static=True, default=None)
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = eqx.field(static=True, default=10_000)
    check_every: int = eqx.field(static=True, default=2)
    patience: int | None = eqx.field(static=True, default=100)
    budget_margin: float | None = eqx.field(static=True, default=2.0)
    backoff: Backoff | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.check_every < 1:
            raise ValueError(f"AdjointODE needs check_every >= 1, got {self.check_every}.")
        check_stopping_rules("AdjointODE", self.patience, self.budget_margin)

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        del jacobian, symmetric
        rtol = default_rtol(g.dtype) if self.rtol is None else self.rtol
        atol = 0.0 if self.atol is None else self.atol
        dt = dt if self.dt0 is None else self.dt0
        k = self.check_every
        # From v = 0 the first Euler step lands on dt g without needing its VJP (J^T 0 = 0):
        # start there, one step already taken (the same iterates, one VJP fewer).
        first = 1 if isinstance(self.solver, diffrax.Euler) and self.max_steps > 1 else 0
        if self.backoff is None:
            it = _AdjointIteration(self.solver, dt, k, self.max_steps, rtol, atol, rms_norm(g), first)
        else:
            dt = jnp.asarray(dt, g.dtype)
            rule = (self.backoff.window, self.backoff.factor, self.backoff.max_halvings)
            it = _AdjointBackoffIteration(self.solver, dt, k, self.max_steps, rtol, atol, rms_norm(g), first, rule)
        v0 = dt * g if first else jnp.zeros_like(g)
        sol = iterate(
            it,
            v0,
            (matvec, g),
            max_iterations=-(-(self.max_steps - first) // k),
            patience=self.patience,
            budget_margin=self.budget_margin,
        )
        # The reported residual is the one the loop judged: the last step difference over
        # the step, `J^T v + g` one step back (with Euler), relative to `rms(g)`. Measuring
        # it again at `v` cost one more VJP per example (a sixth of RBP's batch gradient on
        # Hopfield n = 256, B = 32) for `info` alone.
        res = sol.residual / jnp.where(it.scale > 0, it.scale, 1)
        return adjoint_solution(sol.value, sol.converged, sol.state[1], res)  # converged: res finite


class _AdjointIteration(AbstractIterativeSolver):
    # `k` solver steps per convergence test (the last chunk stops at `max_steps`); the state
    # carries the solver's state and the steps taken.
    solver: diffrax.AbstractSolver
    dt: Any  # a float, or a traced step per example (the forward's final `Backoff` step)
    k: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rtol: Any
    atol: Any
    scale: Any
    first: int = eqx.field(static=True)

    def init(self, v0, args):
        t0 = self.first * self.dt
        return self.solver.init(_TERM, t0, t0 + self.dt, v0, args), jnp.asarray(self.first)

    def step(self, v, state, args, iteration):
        del iteration
        s, step = state
        v_prev = v
        for j in range(self.k):
            live = step + j < self.max_steps
            t = (step + j).astype(v.dtype) * self.dt
            v1, _, _, s1, _ = self.solver.step(_TERM, t, t + self.dt, v, args, s, False)
            if self.k == 1:
                v_prev, v, s = v, v1, s1
            else:
                v_prev = jnp.where(live, v, v_prev)
                v = jnp.where(live, v1, v)
                s = jax.tree.map(lambda a, b: jnp.where(live, a, b), s1, s)
        return v, (s, jnp.minimum(step + self.k, self.max_steps)), rms_norm(v - v_prev) / self.dt

    def tolerance(self, v, args):
        del args
        # Relative to the adjoint state as well as to g, as the forward test is relative to
        # r: rounding leaves a residual ~ eps ||J|| |v|, which for |v| >> |g| (large
        # weights) sits above rtol |g| and would run the loop to max_steps. (`<=` in the
        # loop: with g = 0 exactly, a saturated loss, v stays 0 and res = tol = 0.)
        return self.rtol * (self.scale + rms_norm(v)) + self.atol


class _AdjointBackoffIteration(_AdjointIteration):
    # As `_AdjointIteration`, with a step that shrinks under `Backoff`'s rule `(window,
    # factor, max_halvings)`.
    rule: tuple[int, float, int] = eqx.field(static=True)

    def init(self, v0, args):
        return start_steps(self.solver, _TERM, self.first * self.dt, v0, args, self.dt, self.first)

    def step(self, v, state, args, iteration):
        del iteration
        return backoff_steps(self.solver, _TERM, self.k, self.max_steps, v, args, state, self.rule)
