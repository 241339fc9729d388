import abc
from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int

from .._custom_types import RealState


# `v -> J^T v`, one VJP of the vector field.
MatVec = Callable[[RealState], RealState]
# Builds the dense Jacobian `J` on demand.
Jacobian = Callable[[], Float[Array, "n n"]]
# The forward relaxation's step: `dt0`, or a traced scalar per example where the relaxation
# changed it (`nd.relaxation.Backoff`).
Step = float | Float[Array, ""]


class AdjointSolution(eqx.Module):
    """What an adjoint solve returns (a typed seam, not a dict).

    - `value`: `v` with `J^T v ~= -g`.
    - `converged`: the solve met its tolerance.
    - `steps`: iterations (VJPs) taken; `-1` where the solver does not report them.
    - `residual`: `rms(J^T v + g) / rms(g)` (`AdjointODE`: as its loop measured it, the
      last step difference over the step, one step before `value`).
    """

    value: Float[Array, " n"]
    converged: Bool[Array, ""]
    steps: Int[Array, ""]
    residual: Float[Array, ""]

    def info(self) -> dict[str, Array]:
        """The entries RBP adds to its `info`."""
        return dict(adjoint_converged=self.converged, adjoint_steps=self.steps, adjoint_residual=self.residual)


class AbstractAdjointSolve(eqx.Module):
    """A strategy for RBP's adjoint equation `J^T v = -(dl/dr*)^T` at the steady state.

    `solve(matvec, g, jacobian, symmetric, dt)` gets `matvec(v) = J^T v` (one VJP of F,
    matrix-free), the loss gradient `g = (dl/dr*)^T`, a function building the dense `J` on
    demand (for dense strategies), whether the network declares `J = J^T`, and the forward
    relaxation's step; it returns an `AdjointSolution`.
    """

    @abc.abstractmethod
    def solve(
        self,
        matvec: MatVec,
        g: RealState,
        jacobian: Jacobian,
        symmetric: bool,
        dt: Step,
    ) -> AdjointSolution:
        """Returns an `AdjointSolution` with `J^T v ~= -g`. `jacobian()` builds the dense J
        on demand; `symmetric` says the network declares `J = J^T` (energy networks); `dt` is
        the forward relaxation's step (the one it ended with, a traced scalar, for
        `nd.relaxation.Backoff`), a step the adjoint dynamics are stable with too (J^T has
        the eigenvalues of J)."""
