import math
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Int

from .._custom_types import RealState
from .._iterate import AbstractIterativeSolver, check_stopping_rules, iterate
from .._misc import rms_norm
from .._options import IntegrationOptions
from ._base import AbstractRelaxation, RelaxationSolution, RelaxKind, TermArgs


_LOG_0_99, _LOG_0_5, _LOG_10 = math.log(0.99), math.log(0.5), math.log(10.0)


class Backoff(AbstractRelaxation):
    r"""Fixed steps of the `solver`, as `FixedStep`, with a step that shrinks, per example,
    when the relaxation stops making progress.

    An explicit step `dt0` is stable only while `|1 + dt0 lambda| < 1` for every eigenvalue
    `lambda` of the Jacobian at the equilibrium. Training moves the weights, and a network
    whose units saturate (an energy network's output units under a cross-entropy loss, a
    strong self-inhibition) grows eigenvalues below `-2 / dt0`: the fixed-step relaxation
    then overshoots and oscillates around an equilibrium that is perfectly stable, and runs
    until its stagnation test ends it, not converged; just inside the bound (`1 + dt0
    lambda` near -1) it converges, but in hundreds of steps. `Backoff` halves the step (by
    `factor`) after `window` convergence tests without progress at the current step, or
    at once when the residual rose tenfold above its best at that step, at most
    `max_halvings` times; every example of a batch keeps its own step. Progress is a 1%
    fall of the residual, unless the iterate swings (consecutive step differences at a
    cosine below -1/2, the mark of `1 + dt lambda < 0`) and the residual fell by less than
    half in the test: halving the step turns such a mode's factor `m` into `(1 + m) / 2`,
    in (0, 1/2). A relaxation that converges at `dt0` without such a swing runs exactly
    the `FixedStep` iterates.

    The equilibrium, and so every steady-state gradient, does not depend on the step; only
    the cost of reaching it does. The final step is reported per example in `info["dt"]`,
    and `nd.RBP()`'s adjoint dynamics (`nd.adjoint.AdjointODE()`, which overshoot at the
    same eigenvalues) run with it. It complements `nd.training.fit(adapt_dt0=True)`, which
    lowers `dt0` for the whole run once the converged rate falls: `Backoff` needs no epoch
    to find the step, and pays, per relaxation that overshoots, `window` tests at each step
    too large. `fit` pays that about once per epoch: it starts each mini-batch's relaxations
    at the step most of the previous batch's ended with (`fit(warm_backoff=True)`, the
    default, through `initial`).

    It does not step on a fixed grid, so BPTT (which differentiates the fixed-step loop)
    and RTRL (which reproduces it) refuse it; `nd.RBP()` and `nd.EP()` take it.

    **Arguments:**

    - `check_every`: solver steps per convergence test (static), as `FixedStep`.
    - `window`: tests at one step without progress before the step shrinks (static).
    - `factor`: the step's shrink factor, in (0, 1) (static).
    - `max_halvings`: how many times the step may shrink (static); past that the
      relaxation goes on at its last step under the stopping rules below.
    - `patience`, `budget_margin`: `FixedStep`'s stopping rules (static), counted over the
      whole relaxation: set `patience` well above `window` (the default 100 against 4).
    - `initial`: the first step (`None`: `dt0`). It may be an array, one per example:
      `nd.EP()` starts its nudged phases at the step the free phase ended with.

    Cost: that of `FixedStep` plus, per test, one inner product and a few scalar
    operations; memory O(n) (the last step difference is kept).
    """

    check_every: int = eqx.field(static=True, default=2)
    window: int = eqx.field(static=True, default=4)
    factor: float = eqx.field(static=True, default=0.5)
    max_halvings: int = eqx.field(static=True, default=6)
    patience: int | None = eqx.field(static=True, default=100)
    budget_margin: float | None = eqx.field(static=True, default=2.0)
    initial: Any = None

    def __check_init__(self):
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"Backoff needs check_every >= 1, got {self.check_every!r}.")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"Backoff needs window >= 1 (tests before the step shrinks), got {self.window!r}.")
        if not 0 < self.factor < 1:
            raise ValueError(f"Backoff needs 0 < factor < 1 (the step's shrink factor), got {self.factor!r}.")
        if not isinstance(self.max_halvings, int) or self.max_halvings < 0:
            raise ValueError(f"Backoff needs max_halvings >= 0, got {self.max_halvings!r}.")
        check_stopping_rules("Backoff", self.patience, self.budget_margin)

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
        dtype = jnp.finfo(r0.dtype).dtype
        dt = jnp.asarray(opts.dt0 if self.initial is None else self.initial, dtype)
        if dt.shape != ():
            raise ValueError(f"Backoff's initial step must be a scalar per example, got shape {dt.shape}.")
        rule = (self.window, self.factor, self.max_halvings)
        it = _BackoffIteration(term, opts.solver, self.check_every, opts.max_steps, rule, opts.rtol, opts.atol)
        sol = iterate(
            it,
            r0,
            (args, dt),
            max_iterations=-(-opts.max_steps // self.check_every),
            patience=self.patience,
            budget_margin=self.budget_margin,
            kind=kind,
            checkpoints=checkpoints,
        )
        _, steps, _, _, control = sol.state
        return RelaxationSolution(sol.value, steps, sol.residual, sol.result, dt=control.dt)


class StepControl(eqx.Module):
    """`Backoff`'s step controller, per example: the current step `dt`, the logs of the
    best residual at that step and of the last one, the tests since the last progress, and
    the shrinks so far."""

    dt: Float[Array, ""]
    best: Float[Array, ""]
    last: Float[Array, ""]
    since: Int[Array, ""]
    shrinks: Int[Array, ""]

    @classmethod
    def start(cls, dt) -> "StepControl":
        top = jnp.asarray(math.log(jnp.finfo(dt.dtype).max), dt.dtype)
        return cls(dt, top, top, jnp.asarray(0), jnp.asarray(0))

    def update(self, res, swing, window: int, factor: float, max_halvings: int) -> "StepControl":
        """After a test whose stopping quantity is `res`, `swing` the cosine between the
        last two step differences. Progress is a 1% fall of the residual below its best at
        this step, unless the iterate swings (cosine below -1/2: a mode the step overshoots,
        `1 + dt lambda < 0`) and the residual fell by less than half since the last test: a
        decaying oscillation that slow (`|1 + dt lambda|` near 1) takes hundreds of steps
        where half the step takes a few. The step shrinks by `factor` after `window` tests
        without progress, or when the residual rose tenfold above its best at this step."""
        # Control flow only: no derivative passes through the step's control.
        log_res = jnp.log(jax.lax.stop_gradient(res))
        fell = log_res < self.best + _LOG_0_99
        slow_swing = (jax.lax.stop_gradient(swing) < -0.5) & (log_res > self.last + _LOG_0_5)
        since = jnp.where(fell & ~slow_swing, 0, self.since + 1)
        shrink = ((since >= window) | (log_res > self.best + _LOG_10)) & (self.shrinks < max_halvings)
        top = math.log(jnp.finfo(self.best.dtype).max)
        best = jnp.where(shrink, top, jnp.where(fell, log_res, self.best))
        return StepControl(
            jnp.where(shrink, self.dt * factor, self.dt),
            best,
            log_res,
            jnp.where(shrink, 0, since),
            self.shrinks + shrink.astype(self.shrinks.dtype),
        )


def swing(d_last, d_before):
    """The cosine between two consecutive step differences (0 where one is zero)."""
    dot = jnp.vdot(d_before, d_last).real
    norms = jnp.sqrt(jnp.vdot(d_last, d_last).real * jnp.vdot(d_before, d_before).real)
    return jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1), 0)


def start_steps(solver, term, t0, y0, term_args, dt, first: int = 0):
    """The state of `backoff_steps` before the first chunk: the solver's state (FSAL
    solvers keep the vector field at the last iterate, which does not depend on the step),
    the steps taken (`first`), the time reached, the last step difference, the controller."""
    s = solver.init(term, t0, t0 + dt, y0, term_args)
    return s, jnp.asarray(first), t0, jnp.zeros_like(y0), StepControl.start(dt)


def backoff_steps(solver, term, k: int, max_steps: int, y, term_args, state, rule: tuple[int, float, int]):
    """`k` solver steps at the controller's step (the last chunk stops at `max_steps`), then
    the controller's update under `rule = (window, factor, max_halvings)`. Returns `(y,
    state, res)`, `res` the last real step's difference over its step."""
    s, step, t, d_last, control = state
    dt, d_before = control.dt, d_last
    for j in range(k):
        live = step + j < max_steps
        y1, _, _, s1, _ = solver.step(term, t, t + dt, y, term_args, s, False)
        d_before = jnp.where(live, d_last, d_before)
        d_last = jnp.where(live, y1 - y, d_last)
        y = jnp.where(live, y1, y)
        s = jtu.tree_map(lambda a, b: jnp.where(live, a, b), s1, s)
        t = jnp.where(live, t + dt, t)
    res = rms_norm(d_last) / dt
    control = control.update(res, swing(d_last, d_before), *rule)
    return y, (s, jnp.minimum(step + k, max_steps), t, d_last, control), res


class _BackoffIteration(AbstractIterativeSolver):
    term: diffrax.AbstractTerm
    solver: diffrax.AbstractSolver
    k: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    rule: tuple[int, float, int] = eqx.field(static=True)
    rtol: Any
    atol: Any

    def init(self, y0, args):
        term_args, dt = args
        return start_steps(self.solver, self.term, jnp.zeros((), dt.dtype), y0, term_args, dt)

    def step(self, r, state, args, iteration):
        del iteration
        return backoff_steps(self.solver, self.term, self.k, self.max_steps, r, args[0], state, self.rule)

    def tolerance(self, r, args):
        del args
        return self.atol + self.rtol * rms_norm(r)
