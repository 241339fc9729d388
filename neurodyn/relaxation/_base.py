import abc
from typing import Any, Literal

import diffrax
import equinox as eqx
from jaxtyping import Array, Float, Int, PyTree

from .._custom_types import RealState
from .._iterate import Solution
from .._options import IntegrationOptions
from .._outcome import RESULTS


# The equinox while-loop kind a relaxation runs (`"checkpointed"` when differentiated through).
RelaxKind = Literal["lax", "checkpointed", "bounded"]
# The vector field's arguments, `(net, x)`, passed through to the diffrax term.
TermArgs = PyTree[Any]


class RelaxationSolution(eqx.Module):
    """What a relaxation strategy returns (a typed seam, not a tuple).

    - `value`: the final state `r`.
    - `steps`: evaluations of the solver's step map (Newton steps for `NewtonKrylov`).
    - `residual`: the stopping quantity, `~ rms(F(r))` (the last step difference over `dt0`).
    - `result`: an `nd.RESULTS`; the caller re-checks convergence against the tolerance.
    - `dt`: the step the relaxation ended with, for a strategy that changes it
      (`Backoff`); `None` for one that keeps `dt0`. Reported as `info["dt"]`.
    """

    value: Float[Array, " n"]
    steps: Int[Array, ""]
    residual: Float[Array, ""]
    result: RESULTS
    dt: Float[Array, ""] | None = None

    @classmethod
    def from_iterate(cls, solution: Solution, steps: Int[Array, ""] | None = None) -> "RelaxationSolution":
        return cls(
            solution.value,
            solution.iterations if steps is None else steps,
            solution.residual,
            solution.result,
        )


class AbstractRelaxation(eqx.Module):
    """A strategy for the forward relaxation to a steady state `F(r*, w, x) = 0`.

    Pass one as the `relaxation=` integration option of `nd.relax` and `nd.value_and_grad`
    (steady-state objectives). Every strategy iterates the map of one step of the chosen
    diffrax `solver` with step `dt0`, `Phi(r) = r + dt0 F(r) + O(dt0^2)`, whose fixed
    points are exactly the zeros of `F`; they differ in how they combine those steps.

    A strategy writes its iteration as an `nd.AbstractIterativeSolver` and runs it with
    `nd.iterate`, which handles the budget, non-finite values, stagnation and the outcome.
    """

    @abc.abstractmethod
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
        """Returns a `RelaxationSolution`. Converged means `residual <= atol + rtol rms(r)`
        (`<=`: with `atol = 0` a steady state at `r = 0` must still stop).

        `kind`/`checkpoints` are the equinox while-loop kind (`"lax"`, or
        `"checkpointed"` when the caller differentiates through the loop)."""


class AbstractSteppingRelaxation(AbstractRelaxation):
    """A relaxation that applies the solver's step map one step at a time, so the loop is
    the discretised dynamics itself: BPTT can differentiate through it and RTRL's joint
    `(r, p)` loop reproduces it (a capability, asked with `isinstance`).

    It declares how it groups steps and when it gives up, which the loops that reproduce it
    (BPTT's stored-states relaxation, RTRL's joint loop) follow: `check_every` solver steps
    per convergence test, and `patience` tests without the residual falling by 1% before it
    stops as `RESULTS.stagnated` (`None`: never)."""

    check_every: eqx.AbstractVar[int]
    patience: eqx.AbstractVar[int | None]


def tolerance(opts: IntegrationOptions, r: Float[Array, " n"]) -> Float[Array, ""]:
    from .._misc import rms_norm

    return opts.atol + opts.rtol * rms_norm(r)
