"""One loop under every iterative solve: relaxations and iterative adjoint solves.

A solve is a small Module implementing `AbstractIterativeSolver` (`init`, `step`,
`tolerance`); `iterate` drives it and handles, once for all of them, the iteration budget,
non-finite values, stagnation and the outcome (as optimistix's `iterative_solve` does for
its root finders). Its result is a typed `Solution`, never a positional tuple.
"""

import abc
from typing import Any, Literal

import equinox as eqx
import equinox.internal as eqxi
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


def stall_update(res, anchor, since):
    """The stagnation counter after a new stopping quantity `res`: `(anchor, since)` is the
    last value that fell by at least 1% and the checks since. A residual far above (10x) the
    anchor is divergence, not stagnation: it does not count. Elementwise, so a batch-native
    loop (BPTT's stored relaxation) counts per example exactly as `iterate` does."""
    better = res < 0.99 * anchor
    stalled = ~better & (res <= 10 * anchor)
    return jnp.where(better, res, anchor), jnp.where(better, 0, since + stalled.astype(since.dtype))


def iterate(
    solver: AbstractIterativeSolver,
    y0: PyTree,
    args: Any,
    *,
    max_iterations: int,
    patience: int | None = None,
    kind: Literal["lax", "checkpointed", "bounded"] = "lax",
    checkpoints: int | None = None,
) -> Solution:
    """Runs `solver` from `y0` until `res <= tolerance(y)`, a non-finite `res`, `max_iterations`,
    or (with `patience`) `patience` iterations without `res` falling by 1%.

    A residual far above (10x) the last improvement is divergence, not stagnation: it is left
    to run into the non-finite test. `kind`/`checkpoints` choose the equinox while loop
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
        y, state, it, _, (anchor, since), _, _ = carry
        y, state, res = solver.step(y, state, args, it)
        res = jnp.asarray(res, dtype)
        it = it + 1
        tol = solver.tolerance(y, args)
        # An infinite tolerance means the iterate's norm overflowed (`rms_norm` gives inf
        # rather than scale a second pass): divergence, never convergence.
        res = jnp.where(jnp.isfinite(tol), res, jnp.inf)
        anchor, since = stall_update(res, anchor, since)
        done = res <= tol
        go = (it < max_iterations) & ~done & jnp.isfinite(res)
        if patience is not None:
            go = go & (since < patience)
        return y, state, it, res, (anchor, since), done, go

    init = (
        y0,
        solver.init(y0, args),
        jnp.asarray(0),
        big,
        (big, jnp.asarray(0)),
        jnp.asarray(False),
        jnp.asarray(max_iterations > 0),
    )
    y, state, it, res, (_, since), done, _ = eqxi.while_loop(
        lambda carry: carry[-1], body, init, max_steps=max_iterations, kind=kind, checkpoints=checkpoints
    )
    converged = jnp.isfinite(res) & done
    finite = jnp.isfinite(res) & all_finite(y)
    stagnated = jnp.asarray(False) if patience is None else (since >= patience)
    return Solution(y, state, it, res, classify(converged, finite, stagnated))


def _dtype(tree):
    import jax

    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return leaves[0].dtype if leaves else jnp.result_type(float)
