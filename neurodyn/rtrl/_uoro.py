import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, PRNGKeyArray

from .._dynamics import solver_init, solver_step
from ._base import AbstractStochasticSensitivity


class UORO(AbstractStochasticSensitivity):
    r"""Unbiased online recurrent optimisation (Tallec & Ollivier 2018): a random rank-one
    estimate `p ~ u v^T` of the sensitivities, with `E[u v^T] = p` exactly.

    With `Phi(r, w)` one solver step of the network (`r_{t+1} = Phi(r_t, w)`), exact
    RTRL on the discretised trajectory is `p_{t+1} = A p_t + M`, `A = dPhi/dr`,
    `M = dPhi/dw`. UORO draws random signs `nu` (`E[nu nu^T] = I`) at every step and sets

    `u' = rho_0 A u + rho_1 nu`,   `v' = v / rho_0 + (nu^T M) / rho_1`,

    so that `E[u' v'^T] = A u v^T + M` (the cross terms have mean zero), with
    `rho_0 = sqrt(||v|| / ||A u||)` and `rho_1 = sqrt(||nu^T M|| / ||nu||)`, the scalings
    that minimise the variance of the estimate (the paper's choice). `A u` is one JVP and
    `nu^T M` one VJP of the solver step; the gradient through the state is
    `(dl/dr . u) v`. By induction `E[u_t v_t^T] = p_t`, and the gradient is unbiased for
    exact RTRL (= BPTT) on the same discretisation; averaging `K` independent draws
    (different `key`s) falls towards it as `1/sqrt(K)`.

    The sensitivity state is `(u, v, k)`: `u` of shape `(n,)`, `v` shaped like the
    parameters, and `k` the number of steps taken; step `k` draws its signs from
    `jax.random.fold_in(key, k)`, so a run is reproducible and different keys give
    independent draws (vmap over keys for many). Under `jax.vmap` over a batch every
    example uses the same signs; `nd.online` keeps counting across episode resets.

    Cost per step: time O(cost(F) + m) (one JVP and one VJP of the step, a few norms),
    memory O(n + m), against O(n^2 m) and O(nm) for exact RTRL. The estimate is noisy (its
    variance grows with the trajectory length and the number of parameters): average over
    draws, or use a small learning rate.

    **Arguments:**

    - `key`: a `jax.random` key or an integer seed (default 0).

    !!! warning

        Only for trajectory objectives and online learning: the estimate is redrawn at
        every step and never settles, so `nd.SteadyState` is refused. The solver is
        restarted at every step (its step map depends on the state alone), so FSAL solvers
        pay one extra evaluation of `F` per step.
    """

    key: PRNGKeyArray

    def __init__(self, key: PRNGKeyArray | int = 0):
        if isinstance(key, int) and not isinstance(key, bool):
            key = jr.PRNGKey(key)
        self.key = key

    def prepare(self, params, static, n, n_in, dtype):
        del params, static, n, n_in, dtype
        return None

    def zeros(self, params, n, aux):
        del aux
        dtype = jtu.tree_leaves(params)[0].dtype
        return (jnp.zeros((n,), dtype), jtu.tree_map(jnp.zeros_like, params), jnp.asarray(0, jnp.int32))

    def restart(self, p, aux):
        del aux
        u, v, k = p
        return (jnp.zeros_like(u), jtu.tree_map(jnp.zeros_like, v), k)

    def stepper(self, solver, params, static, aux):
        del aux

        def init(state, x, t0, dt):
            del state, x, t0, dt
            return None

        def step(state, x, t0, dt, solver_state=None):
            del solver_state
            r, (u, v, k) = state

            def phi(r, params):
                net = eqx.combine(params, static)
                s = solver_init(solver, net, r, x, t0, dt)
                return solver_step(solver, net, r, x, t0, dt, s, False)[0]

            r1, Au = jax.jvp(lambda r: phi(r, params), (r,), (u,))
            _, vjp = jax.vjp(lambda w: phi(r, w), params)
            nu = jr.rademacher(jr.fold_in(self.key, k), r.shape, r.dtype)
            (nuM,) = vjp(nu)
            eps = jnp.finfo(r.dtype).eps
            rho0 = jnp.sqrt((_norm(v) + eps) / (_norm(Au) + eps))
            rho1 = jnp.sqrt((_norm(nuM) + eps) / (_norm(nu) + eps))
            u1 = rho0 * Au + rho1 * nu
            v1 = jtu.tree_map(lambda a, b: a / rho0.astype(a.dtype) + b / rho1.astype(b.dtype), v, nuM)
            return (r1, (u1, v1, k + 1)), None

        return init, step

    def contract(self, p, g_r, aux):
        del aux
        u, v, _ = p
        c = jnp.vdot(g_r, u.astype(g_r.dtype))
        return jtu.tree_map(lambda a: c.astype(a.dtype) * a, v)


def _norm(tree) -> Array:
    leaves = jtu.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in leaves))
