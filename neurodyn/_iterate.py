"""One loop under every iterative solve: relaxations and iterative adjoint solves.

A solve is a small Module implementing `AbstractIterativeSolver` (`init`, `step`,
`tolerance`); `iterate` drives it and handles, once for all of them, the iteration budget,
non-finite values, stagnation and the outcome (as optimistix's `iterative_solve` does for
its root finders). Its result is a typed `Solution`, never a positional tuple.
"""

import abc
import math
from typing import Any, Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._misc import all_finite
from ._outcome import RESULTS


class AbstractIterativeSolver(eqx.Module):
    """One iterative solve, `y_{k+1} = step(y_k)`, until its stopping quantity `res` falls to
    `tolerance(y)`.

    Implement `init`, `step` and `tolerance`; call `nd.iterate(solver, y0, args, ...)`.
    `iterate` starts `res` at the largest finite float (a solver never writes its own start
    value), so an infinite or NaN `res` always means divergence.
    """

    @abc.abstractmethod
    def init(self, y0: PyTree, args: Any) -> PyTree:
        """The solver's state before the first step (a pytree of arrays)."""

    @abc.abstractmethod
    def step(
        self, y: PyTree, state: PyTree, args: Any, iteration: Int[Array, ""]
    ) -> tuple[PyTree, PyTree, Float[Array, ""]]:
        """One iteration: `(y, state, res)`, with `res` the stopping quantity after it (e.g. the
        step difference over the step size, or `rms(F(y))`)."""

    @abc.abstractmethod
    def tolerance(self, y: PyTree, args: Any) -> Float[Array, ""]:
        """The iteration has converged when `res <= tolerance(y)` (`<=`: a zero tolerance
        at a zero residual still stops)."""


class Solution(eqx.Module):
    """The outcome of `iterate`.

    - `value`: the final iterate `y`.
    - `state`: the solver's final state.
    - `iterations`: iterations taken.
    - `residual`: the last stopping quantity `res`.
    - `result`: an `nd.RESULTS` (`successful`, `max_steps_reached`, `nonfinite`,
      `stagnated`).
    """

    value: PyTree
    state: PyTree
    iterations: Int[Array, ""]
    residual: Float[Array, ""]
    result: RESULTS

    @property
    def converged(self) -> Bool[Array, ""]:
        return self.result == RESULTS.successful


def classify(converged, finite, stagnated) -> RESULTS:
    """The outcome of an iterative solve from its three flags (converged wins; non-finite
    beats stagnation; otherwise the budget ran out)."""
    return RESULTS.where(
        converged,
        RESULTS.successful,
        RESULTS.where(
            finite,
            RESULTS.where(stagnated, RESULTS.stagnated, RESULTS.max_steps_reached),
            RESULTS.nonfinite,
        ),
    )


# The slow-progress test runs at checks 2 * _FIRST_WINDOW, then at every doubling.
_FIRST_WINDOW = 32
_LOG_0_99, _LOG_10 = math.log(0.99), math.log(10)


class Progress(eqx.Module):
    """A loop's progress towards its tolerance, per example (elementwise, so a batch-native
    loop, BPTT's stored relaxation, counts exactly as `iterate` does). In logarithms: the
    tests are on ratios, and every operation here is traced into every loop of every
    program (each one added to a program's tracing and compile time, measurably).

    - `best`: log of the last stopping quantity that fell by at least 1% (the best so far).
    - `since`: checks since then that were not far above it (10x above is divergence, which
      the non-finite test ends, unless it is too slow for the budget: see `update`).
    - `mark`, `res_mark`: logs of `best` and of the stopping quantity at the last
      power-of-two check.
    """

    best: Float[Array, "*batch"]
    since: Int[Array, "*batch"]
    mark: Float[Array, "*batch"]
    res_mark: Float[Array, "*batch"]

    @classmethod
    def start(cls, shape, dtype) -> "Progress":
        top = jnp.full(shape, math.log(jnp.finfo(dtype).max), dtype)
        return cls(top, jnp.zeros(shape, int), top, top)

    def update(self, res, checks, tol, max_checks: int, patience: int, margin: float | None) -> "Progress":
        """After the `checks`-th test, whose stopping quantity is `res` against `tol`.

        Stagnation is `since >= patience`: `patience` checks without a 1% fall (an
        oscillation, a rounding floor above the tolerance). Unless `margin` is None, two
        tests at checks 64, 128, 256, ... end a loop that cannot finish within
        `max_checks` either, each extrapolating geometrically over the window since the
        previous power of two:

        - falling too slowly: the best fell in the window, but at that rate reaching `tol`
          would take more than `margin` times the `max_checks - checks` checks left. Exact
          for the linear convergence of a fixed-step relaxation or adjoint iteration, and
          optimistic for anything slower (a residual that crawls down like a power of the
          step count, at an equilibrium that is barely stable): no loop that would have
          converged within its budget at its current rate is stopped. A window without a
          new best (a plateau) is left to the patience test.
        - far above its best (10x) and not on course to overflow within the budget: a
          slow divergence or an oscillation far from any equilibrium, which would have
          ended at `max_checks`. A divergence that would overflow in time still ends as
          non-finite.

        Both set `since` to `patience`: the outcome is stagnated, where the loop would
        have ended not converged anyway."""
        # Control flow only: no derivative of a loop differentiated through (BPTT's
        # checkpointed relaxation) passes through these logarithms.
        log_res = jnp.log(jax.lax.stop_gradient(res))
        better = log_res < self.best + _LOG_0_99
        near = log_res <= self.best + _LOG_10
        best = jnp.where(better, log_res, self.best)
        since = jnp.where(better, 0, self.since + near.astype(self.since.dtype))
        if margin is None:
            return Progress(best, since, self.mark, self.res_mark)
        log_tol = jnp.log(jax.lax.stop_gradient(tol))
        at_mark = (checks >= _FIRST_WINDOW) & ((checks & (checks - 1)) == 0)
        checks = checks.astype(best.dtype)
        window, left = 0.5 * checks, max_checks - checks
        # Too slow: log(best / tol) * window > margin * left * log(mark / best), the rate per
        # check being log(mark / best) / window. Far above: log(max / res) * window > left *
        # log(res / res_mark), the growth per check log(res / res_mark) / window.
        top = math.log(jnp.finfo(best.dtype).max)
        slow = (tol > 0) & (best > log_tol) & (best < self.mark)
        slow = slow & ((best - log_tol) * window > margin * left * (self.mark - best))
        stuck = ~near & ((top - log_res) * window > left * (log_res - self.res_mark))
        stop = at_mark & (checks >= 2 * _FIRST_WINDOW) & (slow | stuck)
        since = jnp.where(stop, jnp.maximum(since, patience), since)
        return Progress(best, since, jnp.where(at_mark, best, self.mark), jnp.where(at_mark, log_res, self.res_mark))


def check_stopping_rules(owner: str, patience: int | None, budget_margin: float | None) -> None:
    """The `patience` and `budget_margin` checks of the strategies that pass them to
    `iterate` (`FixedStep`, `AdjointODE`): a clear error naming `owner`."""
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"{owner} needs patience >= 1 or None, got {patience!r}.")
    if budget_margin is not None and not budget_margin > 0:
        raise ValueError(f"{owner} needs budget_margin > 0 or None, got {budget_margin!r}.")


def iterate(
    solver: AbstractIterativeSolver,
    y0: PyTree,
    args: Any,
    *,
    max_iterations: int,
    patience: int | None = None,
    budget_margin: float | None = None,
    kind: Literal["lax", "checkpointed", "bounded"] = "lax",
    checkpoints: int | None = None,
) -> Solution:
    """Runs `solver` from `y0` until `res <= tolerance(y)`, a non-finite `res`, `max_iterations`,
    or (with `patience`) `patience` iterations without `res` falling by 1% or, with a
    `budget_margin` too, a fall too slow to reach the tolerance within `max_iterations`
    (see `Progress.update`); both end as `RESULTS.stagnated`.

    A residual far above (10x) the last improvement is divergence, not stagnation: it is left
    to run into the non-finite test (with a `budget_margin`, only while it could overflow
    within `max_iterations`). `kind`/`checkpoints` choose the equinox while loop
    (`"checkpointed"` for reverse mode through the iterations, as BPTT needs).
    """
    # The stopping quantity is real even for complex iterates.
    dtype = jnp.finfo(_dtype(y0)).dtype
    big = jnp.asarray(jnp.finfo(dtype).max, dtype)

    # The body decides whether to go on and carries the flag: the condition only reads it.
    # (Under `vmap` the condition runs twice per iteration, once for the batch and once per
    # example inside the body's select; testing there cost a tolerance's reductions over
    # the whole state each time.)
    def body(carry):
        y, state, it, _, progress, _, _ = carry
        y, state, res = solver.step(y, state, args, it)
        res = jnp.asarray(res, dtype)
        it = it + 1
        tol = solver.tolerance(y, args)
        # An infinite tolerance means the iterate's norm overflowed (`rms_norm` gives inf
        # rather than scale a second pass): divergence, never convergence.
        res = jnp.where(jnp.isfinite(tol), res, jnp.inf)
        done = res <= tol
        go = (it < max_iterations) & ~done & jnp.isfinite(res)
        if patience is not None:
            progress = progress.update(res, it, jnp.asarray(tol, dtype), max_iterations, patience, budget_margin)
            go = go & (progress.since < patience)
        return y, state, it, res, progress, done, go

    init = (
        y0,
        solver.init(y0, args),
        jnp.asarray(0),
        big,
        Progress.start((), dtype),
        jnp.asarray(False),
        jnp.asarray(max_iterations > 0),
    )
    y, state, it, res, progress, done, _ = eqxi.while_loop(
        lambda carry: carry[-1], body, init, max_steps=max_iterations, kind=kind, checkpoints=checkpoints
    )
    converged = jnp.isfinite(res) & done
    finite = jnp.isfinite(res) & all_finite(y)
    stagnated = jnp.asarray(False) if patience is None else (progress.since >= patience)
    return Solution(y, state, it, res, classify(converged, finite, stagnated))


def _dtype(tree):
    import jax

    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.result_type(float)
