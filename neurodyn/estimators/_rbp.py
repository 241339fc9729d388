import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._custom_types import Info, Scalar
from .._dynamics import adjoint_for, relax_loop
from .._objectives import AbstractObjective, SteadyState
from .._options import IntegrationOptions
from .._outcome import RESULTS
from ..adjoint import AbstractAdjointSolve, AdjointODE
from ..networks import AbstractEnergyNetwork, AbstractNetwork
from ._base import AbstractSurrogateEstimator, CheckedInput, CheckedTarget, Residuals


class RBP(AbstractSurrogateEstimator):
    r"""Recurrent backpropagation: the implicit gradient at the steady state.

    At the steady state `F(r*, w, x) = 0`, the implicit function theorem gives
    `dr*/dw = -J^-1 dF/dw` with `J = dF/dr`. RBP solves the adjoint equation

    `v J = -dl/dr*`   (i.e. `J^T v = -(dl/dr*)^T`)

    matrix-free (VJPs of F; the Jacobian is never formed unless `adjoint=DenseLU()`), and
    returns `dl/dw = v dF/dw + dl/dw|_readout`. For `Layered` networks `v*` is backprop's
    error terms (Almeida 1987; Pineda 1987); for the rate form `x = f(Wx + b)` it is
    `(D^-1 - W^T) s = dR/dx`, `dW = s x^T`.

    Cost: one relaxation plus one adjoint solve of K VJPs; memory O(n), independent of the
    number of relaxation steps. Exact when the relaxation and the adjoint solve converge.

    **Arguments:**

    - `adjoint`: the adjoint solve, an `nd.adjoint` strategy: `AdjointODE()` (default: the
      adjoint dynamics of Almeida (1987) and Pineda (1987) with the forward relaxation's
      solver step, the fastest on the CPU in the README's adjoint table), `Linear(solver)`
      (any lineax solver, matrix-free: CG on energy networks and GMRES otherwise by default),
      `JaxBiCGStab()`, `JaxGMRES()`, `JaxCG()` (jax.scipy's Krylov solves, faster than
      lineax's under `vmap`), `Neumann(K)`, `DenseLU()`, or your own
      `nd.adjoint.AbstractAdjointSolve`.
    - `stability_check`: if True, estimate the eigenvalue of J with the largest real part
      by power iteration on `I + dt J` (JVPs only) and report it in
      `info["leading_eigenvalue"]`; an equilibrium with a non-negative one is flagged.
    - `power_iterations`: iterations of that estimate.

    !!! warning

        At an unstable equilibrium (the relaxation cannot find it, but a Newton solve can)
        the implicit gradient exists yet means little: `info["unstable"]` says so.

    An adjoint solve that diverges or ends no closer than `v = 0` (relative residual 1 or
    more; `info["unstable"]`) has no estimate to give: its example's gradient is the
    readout term alone, not the last iterate's (which, at the examples a training run's
    relaxations failed on, reached 1e17 and froze Adam's updates for the whole run).
    """

    adjoint: AbstractAdjointSolve = AdjointODE()
    stability_check: bool = eqx.field(static=True, default=False)
    power_iterations: int = eqx.field(static=True, default=200)
    objectives = (SteadyState,)

    def surrogate(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        residuals: Residuals,
    ) -> Scalar:
        # dl/dw = v dF/dw + dl/dw|_readout: the gradient of this scalar at fixed (r, v).
        r, v = residuals
        return objective.value(net, r, y) + jnp.vdot(v, net(0.0, r, x))

    def solve(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Residuals, Info]:
        r, info = relax_loop(net, x, net.init_state(x), options)

        def loss_of(r):
            return objective.value(net, r, y)

        loss, g_r = jax.value_and_grad(loss_of)(r)

        def F_r(r):
            return net(0.0, r, x)

        _, vjp_r = jax.vjp(F_r, r)

        def matvec(v):
            return vjp_r(v)[0]

        def jacobian():
            return jax.jacfwd(F_r)(r)

        symmetric = isinstance(net, AbstractEnergyNetwork)
        # The forward's final step (`nd.relaxation.Backoff` shrinks it where `dt0` overshoots;
        # the adjoint dynamics overshoot at the same eigenvalues).
        adjoint = adjoint_for(self.adjoint, options)
        adjoint = adjoint.solve(matvec, g_r, jacobian, symmetric, info.get("dt", options.dt0))
        v, ainfo = adjoint.value, adjoint.info()

        # An adjoint that blows up, or makes no progress at all, signals an unstable equilibrium.
        unstable = ~jnp.isfinite(adjoint.residual) | (~adjoint.converged & (adjoint.residual >= 1))
        # Its last iterate is no estimate: `v = 0` has relative residual 1, so one at or above
        # it is no better, and a diverged one (up to 1e17 at a training run's failed examples,
        # or inf) would swamp a batch's gradient and, through Adam's second moments, stall
        # training. The example keeps its readout term alone; `info` flags it.
        v = jnp.where(unstable, jnp.zeros_like(v), v)
        extra = {}
        if self.stability_check:
            lam = _leading_eigenvalue(F_r, r, 0.1, self.power_iterations)
            unstable = unstable | (lam >= 0)
            extra["leading_eigenvalue"] = lam
        forward_ok = info["converged"]
        converged = forward_ok & adjoint.converged & ~unstable
        result = RESULTS.where(
            ~forward_ok,
            info["result"],
            RESULTS.where(
                unstable,
                RESULTS.unstable_equilibrium,
                RESULTS.where(converged, RESULTS.successful, RESULTS.adjoint_max_steps_reached),
            ),
        )
        info = dict(
            info,
            **ainfo,
            **extra,
            forward_converged=forward_ok,
            converged=converged,
            unstable=unstable,
            result=result,
        )
        return loss, (r, v), info


def _leading_eigenvalue(F_r, r, h, iterations):
    """The eigenvalue of J with the largest real part, by power iteration on `I + h J`
    (whose dominant eigenvalue is `1 + h lambda` for small h; h = 0.1 orders the
    eigenvalues of these networks, |lambda| < ~5, by real part), with JVPs only."""
    _, jvp = jax.linearize(F_r, r)
    u0 = jr.normal(jr.PRNGKey(0), r.shape, r.dtype)
    u0 = u0 / jnp.linalg.norm(u0)

    def body(u, _):
        w = u + h * jvp(u)
        return w / jnp.linalg.norm(w), None

    u, _ = jax.lax.scan(body, u0, None, length=iterations)
    mu = u @ (u + h * jvp(u))
    return (mu - 1) / h
