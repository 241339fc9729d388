from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array

from .._custom_types import RealState
from ._base import AbstractAdjointSolve, AdjointSolution, Jacobian, MatVec, Step
from ._common import adjoint_solution, default_rtol, relative_residual


class Linear(AbstractAdjointSolve):
    r"""Solves `J^T v = -g` with a lineax linear solver on a matrix-free operator (one VJP
    of F per iteration; no Jacobian is formed), as diffrax's
    `ImplicitAdjoint(linear_solver=...)` takes one.

    The operator `J^T` is tagged symmetric and negative semidefinite when the network
    declares a symmetric Jacobian (energy networks: at a stable equilibrium of a gradient
    flow `J = -Hessian`), so `lineax.CG` applies there.

    **Arguments:**

    - `linear_solver`: any `lineax.AbstractLinearSolver` (`lx.GMRES(rtol, atol, restart=...)`,
      `lx.BiCGStab(...)`, `lx.CG(...)` on energy networks). `None` (default): CG on energy
      networks, GMRES(restart = 40) otherwise, with tolerances by dtype (1e-5 in float32,
      where GMRES stagnates below that, 1e-10 in float64) and an absolute tolerance scaled by
      `max |g|` (lineax's tolerances are elementwise: zero entries of `g`, hidden units the
      loss does not see, would otherwise demand an exact zero).
    - `fallback`: a second lineax solver for where the first returns a non-finite solution.
      BiCGStab breaks down (a division by zero, NaN) when its Krylov space is exhausted at the
      solution, as on `Layered` networks (`I + J` nilpotent): `Linear(lx.BiCGStab(...),
      fallback=lx.GMRES(...))`. Under `vmap` the fallback is a select, so both solves run.

    Convergence is judged by the true residual `rms(J^T v + g) / rms(g) <= 10 rtol + atol`
    (lineax reports breakdown as failure when a small Krylov space is exhausted at the exact
    solution). Measured on the CPU under `vmap`, lineax's Krylov solvers cost several times
    `AdjointODE` and `JaxBiCGStab` (see the README's adjoint table).

    Cost: K VJPs of F (K iterations), memory O(n * restart).
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    fallback: lx.AbstractLinearSolver | None = None

    def __check_init__(self):
        for name in ("linear_solver", "fallback"):
            solver = getattr(self, name)
            if solver is not None and not isinstance(solver, lx.AbstractLinearSolver):
                raise ValueError(
                    f"nd.adjoint.Linear's {name} must be a lineax solver such as "
                    f"lineax.GMRES(rtol=1e-5, atol=1e-6), got {solver!r}."
                )

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        del dt, jacobian
        rtol = default_rtol(g.dtype)
        solver = self.linear_solver
        if solver is None:
            # A traced scalar, scaled to `g`: lineax annotates `float` but keeps it as an array field.
            atol = cast(float, rtol * jnp.max(jnp.abs(g)))
            solver = (
                lx.CG(rtol=rtol, atol=atol, max_steps=500)
                if symmetric
                else lx.GMRES(rtol=rtol, atol=atol, max_steps=500, restart=40)
            )
        tags = (lx.symmetric_tag, lx.negative_semidefinite_tag) if symmetric else ()
        op = lx.FunctionLinearOperator(matvec, jnp.zeros_like(g), tags)
        sol = lx.linear_solve(op, -g, solver, throw=False)
        v = sol.value
        res = relative_residual(matvec, v, g)
        steps = jnp.asarray(sol.stats.get("num_steps", -1))
        if self.fallback is not None:
            fallback = self.fallback

            def again(_):
                s2 = lx.linear_solve(op, -g, fallback, throw=False)
                return s2.value, relative_residual(matvec, s2.value, g), steps + s2.stats.get("num_steps", 0)

            v, res, steps = jax.lax.cond(~jnp.isfinite(res), again, lambda _: (v, res, steps), None)
        tol = 10 * getattr(solver, "rtol", rtol) + (0.0 if self.linear_solver is None else _atol(solver))
        return adjoint_solution(v, jnp.isfinite(res) & (res <= tol), steps, res)


def _atol(solver):
    atol = getattr(solver, "atol", 0.0)
    return atol if isinstance(atol, (int, float)) else 0.0


class AbstractJaxKrylov(AbstractAdjointSolve):
    """A `jax.scipy.sparse.linalg` Krylov solve: fixed-shape loops without lineax's
    per-iteration bookkeeping, several times faster under `vmap` on the CPU. jax.scipy
    reports no iteration count (`adjoint_steps` is -1)."""

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]

    def _tolerances(self, g: Array) -> tuple[float, float, float]:
        rtol = default_rtol(g.dtype) if self.rtol is None else self.rtol
        # A traced scalar when scaled to `g`: jax.scipy's solvers annotate `float` but only
        # compare against it inside their loops, where an array is what they get anyway.
        atol = cast(float, rtol * jnp.max(jnp.abs(g))) if self.atol is None else self.atol
        return rtol, atol, 10 * rtol + (0.0 if self.atol is None else self.atol)


def _jax_gmres(matvec, g, rtol, atol, restart, max_steps, x0=None):
    import jax.scipy.sparse.linalg as jsla

    restarts = max(1, -(-max_steps // restart))
    v, _ = jsla.gmres(
        matvec, -g, x0, tol=rtol, atol=atol, restart=restart, maxiter=restarts, solve_method="incremental"
    )
    return v


class JaxGMRES(AbstractJaxKrylov):
    r"""GMRES on `J^T v = -g` (`jax.scipy.sparse.linalg.gmres`, incremental Arnoldi).

    **Arguments:** `rtol`, `atol` (`None`: by dtype, as `Linear`), `max_steps`, `restart`.
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = eqx.field(static=True, default=500)
    restart: int = eqx.field(static=True, default=40)

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        del jacobian, symmetric, dt
        rtol, atol, tol = self._tolerances(g)
        v = _jax_gmres(matvec, g, rtol, atol, self.restart, self.max_steps)
        res = relative_residual(matvec, v, g)
        return adjoint_solution(v, jnp.isfinite(res) & (res <= tol), -1, res)


class JaxBiCGStab(AbstractJaxKrylov):
    r"""BiCGStab on `J^T v = -g` (`jax.scipy.sparse.linalg.bicgstab`): the fewest VJPs
    per solve of the Krylov methods here, and the fastest iterative adjoint after
    `AdjointODE` on the CPU.

    BiCGStab breaks down (NaN) when its Krylov space is exhausted at the solution (`Layered`
    networks); where it does, GMRES started from zero finishes the solve (under `vmap` it
    starts from the BiCGStab solution where that is finite, so it stops at once there).

    **Arguments:** `rtol`, `atol` (`None`: by dtype), `max_steps`, `restart` (of the GMRES
    fallback).
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = eqx.field(static=True, default=500)
    restart: int = eqx.field(static=True, default=40)

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        import jax.scipy.sparse.linalg as jsla

        del jacobian, symmetric, dt
        rtol, atol, tol = self._tolerances(g)
        v, _ = jsla.bicgstab(matvec, -g, tol=rtol, atol=atol, maxiter=self.max_steps)
        res = relative_residual(matvec, v, g)
        broke = ~jnp.isfinite(res)
        x0 = jnp.where(broke, jnp.zeros_like(v), v)

        def gmres(_):
            u = _jax_gmres(matvec, g, rtol, atol, self.restart, self.max_steps, x0)
            return u, relative_residual(matvec, u, g)

        v, res = jax.lax.cond(broke, gmres, lambda _: (v, res), None)
        return adjoint_solution(v, jnp.isfinite(res) & (res <= tol), -1, res)


class JaxCG(AbstractJaxKrylov):
    r"""Conjugate gradients on `-J^T v = g` (`jax.scipy.sparse.linalg.cg`): for energy
    networks only, where `-J^T` is symmetric positive definite at a stable equilibrium.

    **Arguments:** `rtol`, `atol` (`None`: by dtype), `max_steps`.
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = eqx.field(static=True, default=500)

    def solve(self, matvec: MatVec, g: RealState, jacobian: Jacobian, symmetric: bool, dt: Step) -> AdjointSolution:
        import jax.scipy.sparse.linalg as jsla

        del jacobian, dt
        if not symmetric:
            raise ValueError(
                "nd.adjoint.JaxCG needs a symmetric Jacobian (an energy network, "
                "nd.networks.AbstractEnergyNetwork); use nd.adjoint.JaxGMRES() or JaxBiCGStab()."
            )
        rtol, atol, tol = self._tolerances(g)
        v, _ = jsla.cg(lambda u: -matvec(u), g, tol=rtol, atol=atol, maxiter=self.max_steps)
        res = relative_residual(matvec, v, g)
        return adjoint_solution(v, jnp.isfinite(res) & (res <= tol), -1, res)
