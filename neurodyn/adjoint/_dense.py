import jax.numpy as jnp

from .._custom_types import RealState
from ._base import AbstractAdjointSolve, AdjointSolution, Jacobian, MatVec, Step
from ._common import adjoint_solution, relative_residual


class DenseLU(AbstractAdjointSolve):
    r"""Forms the dense Jacobian `J` (n JVPs) and solves `J^T v = -g` by LU.

    Cost O(n^3) time, O(n^2) memory: small n only, or as a reference.

    !!! warning

        Never the default: at n = 4096 the Jacobian alone is 128 MiB in float64 and the
        factorisation dominates everything else. Use `Linear`, `JaxBiCGStab` or `AdjointODE` for anything but tiny networks.
    """

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        del dt, symmetric
        J = jacobian()
        v = jnp.linalg.solve(J.T, -g)
        res = relative_residual(matvec, v, g)
        return adjoint_solution(v, jnp.isfinite(res), 1, res)
