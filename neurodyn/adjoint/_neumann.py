import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import RealState
from ._base import AbstractAdjointSolve, AdjointSolution, Jacobian, MatVec, Step
from ._common import adjoint_solution, default_rtol, relative_residual


class Neumann(AbstractAdjointSolve):
    r"""Truncated Neumann series (Liao et al. 2018): `v_K = alpha sum_{k<K} (I + alpha J^T)^k g`
    with sign so that `v_K -> -J^-T g`.

    It is the adjoint dynamics `dv/dt = J^T v + g` stepped K times with Euler step `alpha`
    from `v = 0`: constant memory, exactly K VJPs, no convergence test. For `Layered`
    networks `I + J` is nilpotent of order L, so `K = L` with `alpha = 1` is exact
    (backprop). The truncation bias decays like `rho(I + alpha J)^K`.

    **Arguments:**

    - `K`: number of terms (static: it is the loop length).
    - `alpha`: the step size (1 by default).
    """

    K: int = eqx.field(static=True, default=20)
    alpha: float = 1.0

    def __check_init__(self):
        if self.K < 1:
            raise ValueError(f"Neumann needs K >= 1 terms, got K={self.K}.")

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        del dt, jacobian, symmetric

        def body(v, _):
            return v + self.alpha * (matvec(v) + g), None

        v, _ = jax.lax.scan(body, jnp.zeros_like(g), None, length=self.K)
        res = relative_residual(matvec, v, g)
        converged = jnp.isfinite(res) & (res < 1e3 * default_rtol(g.dtype))
        return adjoint_solution(v, converged, self.K, res)
