from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from .._custom_types import RealState
from .._iterate import AbstractIterativeSolver, check_stopping_rules, iterate
from .._misc import rms_norm
from .._options import IntegrationOptions
from ._base import AbstractSteppingRelaxation, RelaxationSolution, RelaxKind, TermArgs


class FixedStep(AbstractSteppingRelaxation):
    r"""Integrates `dr/dt = F(r)` with fixed steps of the `solver` until
    `rms(F(r)) < atol + rtol rms(r)` (measured as the last step difference over `dt0`).

    With `diffrax.Euler()` and `dt0 = 1` (the steady-state default) on `dr/dt = -r + f(.)`
    networks this is the fixed-point iteration `r <- f(W r + U x + b)`: it converges
    linearly at the rate `rho(I + dt0 J)` at `r*`.

    This is the loop BPTT differentiates (reverse mode through a checkpointed while loop),
    so it is the only strategy BPTT accepts.

    **Arguments:**

    - `check_every`: solver steps per convergence test (static). Each test (and loop
      iteration) costs a few reductions and, under `vmap`, a batch-wide `any`; testing every
      other step saves that at the price of at most one extra step. The default relaxation
      (`relaxation=None`) is `FixedStep(check_every=2)`: measured 0-5% faster on the CPU than
      testing every step (10% before the loop condition became a carried flag). `max_steps`
      is never exceeded.
    - `patience`: convergence checks without the residual falling by 1% before the loop
      stops with `RESULTS.stagnated` (static; `None` never stops early). A relaxation that
      oscillates (a network trained into an unstable regime) or sits on a rounding floor
      above the tolerance (float32 matmuls in TF32 on a GPU) then costs `patience` checks,
      not `max_steps` steps. A contraction slower than 1% per `patience` checks would need
      far more than the default `max_steps` anyway.
    - `budget_margin`: with a `patience`, a residual that keeps falling but too slowly for
      the budget stops as stagnated too (static; `None` never). At checks 64, 128, 256, ...
      the rate at which the best residual fell since the previous power of two is
      extrapolated geometrically (exact for a linear contraction, optimistic for anything
      slower, such as the power-law crawl to an equilibrium that is barely stable); the
      loop stops when reaching the tolerance would take more than `budget_margin` times
      the checks `max_steps` leaves. So no relaxation that would converge within its
      budget at its current rate is stopped.

    Cost: one evaluation of F per step (Euler), memory O(n).
    """

    check_every: int = eqx.field(static=True, default=1)
    patience: int | None = eqx.field(static=True, default=100)
    budget_margin: float | None = eqx.field(static=True, default=2.0)

    def __check_init__(self):
        if self.check_every < 1:
            raise ValueError(f"FixedStep needs check_every >= 1, got {self.check_every}.")
        check_stopping_rules("FixedStep", self.patience, self.budget_margin)

    def relax(
        self,
        term: diffrax.AbstractTerm,
        args: TermArgs,
        r0: RealState,
        opts: IntegrationOptions,
        *,
        kind: RelaxKind,
        checkpoints: int | None,
    ) -> RelaxationSolution:
        it = _FixedStepIteration(term, opts.solver, opts.dt0, self.check_every, opts.max_steps, opts.rtol, opts.atol)
        sol = iterate(
            it,
            r0,
            args,
            max_iterations=-(-opts.max_steps // self.check_every),
            patience=self.patience,
            budget_margin=self.budget_margin,
            kind=kind,
            checkpoints=checkpoints,
        )
        return RelaxationSolution.from_iterate(sol, steps=sol.state[1])


class _FixedStepIteration(AbstractIterativeSolver):
    # `check_every` solver steps per iteration; the state carries the solver's state (FSAL
    # solvers reuse their last stage) and the number of steps taken.
    term: diffrax.AbstractTerm
    solver: diffrax.AbstractSolver
    dt: float = eqx.field(static=True)
    k: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rtol: Any
    atol: Any

    def init(self, y0, args):
        return self.solver.init(self.term, 0.0, self.dt, y0, args), jnp.asarray(0)

    def step(self, r, state, args, iteration):
        del iteration
        s, step = state
        dt = self.dt
        if self.k == 1:
            t = step.astype(r.real.dtype) * dt
            r1, _, _, s1, _ = self.solver.step(self.term, t, t + dt, r, args, s, False)
            return r1, (s1, step + 1), rms_norm(r1 - r) / dt
        r_prev = r
        for j in range(self.k):
            # The last chunk stops at max_steps; the residual is that of the last real step.
            live = step + j < self.max_steps
            t = (step + j).astype(r.real.dtype) * dt
            r1, _, _, s1, _ = self.solver.step(self.term, t, t + dt, r, args, s, False)
            r_prev = jnp.where(live, r, r_prev)
            r = jnp.where(live, r1, r)
            s = jtu.tree_map(lambda a, b: jnp.where(live, a, b), s1, s)
        return r, (s, jnp.minimum(step + self.k, self.max_steps)), rms_norm(r - r_prev) / dt

    def tolerance(self, r, args):
        del args
        return self.atol + self.rtol * rms_norm(r)


def stopping_rules(relaxation) -> tuple[int | None, float | None]:
    """`(patience, budget_margin)` for a loop that tests every step and reproduces the
    stepping relaxation `relaxation` (`None`, or a strategy that does not step: the
    `FixedStep()` BPTT and RTRL run instead): its patience in steps (checks of
    `check_every` steps), and its slow-progress margin (none for a stepping relaxation of
    the user's own that does not declare one)."""
    from ._base import AbstractSteppingRelaxation

    if not isinstance(relaxation, AbstractSteppingRelaxation):
        relaxation = FixedStep()
    patience = None if relaxation.patience is None else relaxation.patience * relaxation.check_every
    return patience, getattr(relaxation, "budget_margin", None)
