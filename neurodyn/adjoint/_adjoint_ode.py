import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax.numpy as jnp

from .._misc import rms_norm
from ._base import AbstractAdjointSolve
from ._common import adjoint_info, default_rtol, relative_residual


def _adjoint_field(t, v, args):
    matvec, g = args
    return matvec(v) + g


class AdjointODE(AbstractAdjointSolve):
    r"""The adjoint dynamics of recurrent backpropagation (Almeida 1987; Pineda 1987), `dv/dt = v J + dl/dr` (Pineda's form),
    integrated with a diffrax solver to its own steady state `v* = -dl/dr J^-1`.

    Stops when `rms(J^T v + g) < rtol (rms(g) + rms(v)) + atol` (relative to the adjoint
    state too, as the forward relaxation's test is relative to `r`: with large weights,
    `|v| >> |g|`, float32 rounding alone leaves a residual above `rtol rms(g)`). It converges exactly when the forward
    equilibrium is stable (the eigenvalues of J have negative real part), so divergence here
    flags an unstable equilibrium.

    **Arguments:**

    - `solver`: a diffrax solver (Euler by default; with `dt0 = 1` it is the Neumann series
      with a convergence test).
    - `dt0`: the fixed step; `None` (default) takes the forward relaxation's `dt0`, with
      which the adjoint dynamics are as stable as the forward ones (same eigenvalues).
    - `rtol`, `atol`: tolerances (`None`: by dtype).
    - `max_steps`: iteration budget.
    """

    solver: diffrax.AbstractSolver = diffrax.Euler()
    dt0: float | None = eqx.field(static=True, default=None)
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = eqx.field(static=True, default=10_000)

    def solve(self, matvec, g, jacobian, symmetric, dt):
        del jacobian, symmetric
        rtol = default_rtol(g.dtype) if self.rtol is None else self.rtol
        atol = 0.0 if self.atol is None else self.atol
        term = diffrax.ODETerm(_adjoint_field)
        args = (matvec, g)
        dt = dt if self.dt0 is None else self.dt0
        scale = rms_norm(g)
        big = jnp.asarray(jnp.finfo(g.dtype).max, g.dtype)

        def tol(v):
            # Relative to the adjoint state as well as to g, as the forward test is relative to
            # r: rounding leaves a residual ~ eps ||J|| |v|, which for |v| >> |g| (large
            # weights) sits above rtol |g| and would run the loop to max_steps.
            return rtol * (scale + rms_norm(v)) + atol

        def cond(carry):
            v, _, step, res = carry
            # `<=`: with g = 0 exactly (a saturated loss) v stays 0 and res = tol = 0.
            return (step < self.max_steps) & ~(res <= tol(v)) & jnp.isfinite(res)

        def body(carry):
            v, s, step, _ = carry
            t = step.astype(g.dtype) * dt
            v1, _, _, s1, _ = self.solver.step(term, t, t + dt, v, args, s, False)
            return v1, s1, step + 1, rms_norm(v1 - v) / dt

        dt = jnp.asarray(dt, g.dtype)
        v0 = jnp.zeros_like(g)
        s0 = self.solver.init(term, 0.0, dt, v0, args)
        v, _, steps, _ = eqxi.while_loop(
            cond, body, (v0, s0, jnp.asarray(0), big), max_steps=self.max_steps, kind="lax"
        )
        res = relative_residual(matvec, v, g)
        # The loop tests the step difference; allow a factor 10 for the exact residual.
        converged = jnp.isfinite(res) & (res * scale <= 10 * tol(v))
        return v, adjoint_info(converged, steps, res)
