from typing import cast

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

    The sensitivity state is `(u, v, k)` (with `variance=True`, `(u, v, k, u2, v2)`): `u`
    of shape `(n,)`, `v` shaped like the parameters, and `k` the number of steps taken. Step
    `k` draws its signs from the key, `k` and (with `mix_input=True`, the default) a hash of
    the bits of the step's input `x`: a run is reproducible, different keys give
    independent draws (vmap over keys for many), and the examples of a batch and the
    successive calls of a training loop, whose inputs differ, get different signs, so that
    averaging over a batch and over training steps averages the noise too. (With
    `mix_input=False` the signs depend on the key and `k` alone: every example and every
    call of `nd.RTRL` draws the same ones.) `nd.online` keeps counting `k` across episode
    resets.

    Cost per step: time O(cost(F) + m) (one JVP and one VJP of the step, a few norms),
    memory O(n + m), against O(n^2 m) and O(nm) for exact RTRL. The estimate is noisy (its
    variance grows with the trajectory length and the number of parameters): average over
    draws, or use a small learning rate.

    How noisy a draw is can be read off the run (`report`): the norms of the two factors
    always, and with `variance=True` an unbiased estimate of the variance itself, from a
    second, independent pair `(u2, v2)` stepped alongside the first with its own signs
    (twice the cost per step; the gradient is still the first pair's, the same as with
    `variance=False` and the same key). For two independent unbiased estimates `a`, `b` of
    the same quantity, `||a - b||^2 / 2` is an unbiased estimate of the total variance
    `E||a - E a||^2` of one of them, and `<a, b>` one of `||E a||^2`. (Cooijmans &
    Martens 2019 analyse how UORO's variance grows with the trajectory length.)

    **Arguments:**

    - `key`: a `jax.random` key or an integer seed (default 0).
    - `variance`: also step the second pair that `report` estimates the variance from
      (default False).
    - `mix_input`: draw the signs from the input's bits too (default True), above.

    !!! warning

        Only for trajectory objectives and online learning: the estimate is redrawn at
        every step and never settles, so `nd.SteadyState` is refused. The solver is
        restarted at every step (its step map depends on the state alone), so FSAL solvers
        pay one extra evaluation of `F` per step.
    """

    key: PRNGKeyArray
    variance: bool = eqx.field(static=True, default=False)
    mix_input: bool = eqx.field(static=True, default=True)

    def __init__(self, key: PRNGKeyArray | int = 0, variance: bool = False, mix_input: bool = True):
        if isinstance(key, int) and not isinstance(key, bool):
            key = jr.PRNGKey(key)
        self.key = cast(PRNGKeyArray, key)
        self.variance = bool(variance)
        self.mix_input = bool(mix_input)

    def prepare(self, params, static, n, n_in, dtype):
        del params, static, n, n_in, dtype
        return None

    def zeros(self, params, n, aux):
        del aux
        dtype = jtu.tree_leaves(params)[0].dtype
        pair = (jnp.zeros((n,), dtype), jtu.tree_map(jnp.zeros_like, params))
        return pair + (jnp.asarray(0, jnp.int32),) + (pair if self.variance else ())

    def restart(self, p, aux):
        del aux
        zero = jtu.tree_map(jnp.zeros_like, p)
        return zero[:2] + (p[2],) + zero[3:]

    def stepper(self, solver, params, static, aux):
        del aux
        # A u is a JVP of the step map and nu^T M a VJP. diffrax's Runge-Kutta solvers loop
        # over their stages in a checkpointed while loop by default, which is reverse-mode
        # only: the JVP steps with a plain while loop over the (fixed) stages, the same step.
        forward = solver
        if hasattr(solver, "scan_kind") and getattr(solver, "scan_kind") in (None, "checkpointed"):
            forward = eqx.tree_at(lambda s: s.scan_kind, solver, "lax", is_leaf=lambda x: x is None)

        def init(state, x, t0, dt):
            del state, x, t0, dt
            return None

        def step(state, x, t0, dt, solver_state=None):
            del solver_state
            r, p = state
            u, v, k = p[:3]

            def phi(solver, r, params):
                net = eqx.combine(params, static)
                s = solver_init(solver, net, r, x, t0, dt)
                return solver_step(solver, net, r, x, t0, dt, s, False)[0]

            def jvp(t):
                return jax.jvp(lambda r: phi(forward, r, params), (r,), (t,))

            r1, vjp = jax.vjp(lambda w: phi(solver, r, w), params)
            key = jr.fold_in(self.key, k)
            if self.mix_input:
                key = jr.fold_in(key, _bits_hash(x))
            new = _pair_step(jvp, vjp, u, v, jr.rademacher(key, r.shape, r.dtype)) + (k + 1,)
            if self.variance:
                nu2 = jr.rademacher(jr.fold_in(key, 1), r.shape, r.dtype)
                new = new + _pair_step(jvp, vjp, p[3], p[4], nu2)
            return (r1, new), None

        return init, step

    def contract(self, p, g_r, aux):
        del aux
        return _contract_pair(p[0], p[1], g_r)

    def report(self, p, aux=None, g_r=None) -> dict[str, Array]:
        r"""How noisy the current estimate is, as scalars for an `info` dict.

        **Arguments:**

        - `p`: the sensitivity state (at the end of a trajectory, or at an update).
        - `aux`: unused (the strategy reads nothing from the network).
        - `g_r`: optionally `dl/dr` at this time, for the variance of the gradient term
          `g_r^T p` rather than of `p` itself.

        **Returns:**

        - `uoro_u_norm`, `uoro_v_norm`: `||u||` and `||v||` (UORO's scalings keep them
          balanced; their product `||u v^T||_F` is the size of the estimate, and its
          square an unbiased estimate of `E||u v^T||_F^2 = ||p||_F^2 + variance`).

        With `variance=True`, also (`a = u v^T`, `b = u2 v2^T`, the two independent draws):

        - `uoro_variance`: `||a - b||_F^2 / 2`, unbiased for the total variance
          `E||u v^T - p||_F^2` of one draw of the sensitivities;
        - `uoro_signal`: `<a, b>_F`, unbiased for `||p||_F^2` (it can come out negative
          when the noise dominates);
        - with `g_r`: `uoro_grad_variance`, `||g_r^T a - g_r^T b||^2 / 2`, unbiased for the
          total variance of the gradient term `g_r^T u v^T` (the whole state part of the
          gradient when the loss is at this one time, e.g. a class read at the last step).

        One run gives one sample of each: they are as noisy as the draw they describe
        (average them over a batch, steps or runs before reading a ratio).
        """
        del aux
        u, v = p[0], p[1]
        out = dict(uoro_u_norm=jnp.linalg.norm(u), uoro_v_norm=_norm(v))
        if not self.variance:
            return out
        u2, v2 = p[3], p[4]
        uu, vv = jnp.vdot(u, u2), _dot(v, v2)
        out["uoro_signal"] = uu * vv
        # ||a - b||^2 = ||u||^2 ||v||^2 + ||u2||^2 ||v2||^2 - 2 (u.u2)(v.v2): O(n + m).
        out["uoro_variance"] = 0.5 * (jnp.vdot(u, u) * _dot(v, v) + jnp.vdot(u2, u2) * _dot(v2, v2) - 2 * uu * vv)
        if g_r is not None:
            diff = jtu.tree_map(jnp.subtract, _contract_pair(u, v, g_r), _contract_pair(u2, v2, g_r))
            out["uoro_grad_variance"] = 0.5 * _dot(diff, diff)
        return out


def _pair_step(jvp, vjp, u, v, nu):
    # u' = rho0 A u + rho1 nu,  v' = v / rho0 + (nu^T M) / rho1  (Tallec & Ollivier 2018).
    _, Au = jvp(u)
    (nuM,) = vjp(nu)
    eps = jnp.finfo(u.dtype).eps
    rho0 = jnp.sqrt((_norm(v) + eps) / (_norm(Au) + eps))
    rho1 = jnp.sqrt((_norm(nuM) + eps) / (_norm(nu) + eps))
    u1 = rho0 * Au + rho1 * nu
    v1 = jtu.tree_map(lambda a, b: a / rho0.astype(a.dtype) + b / rho1.astype(b.dtype), v, nuM)
    return u1, v1


def _bits_hash(x) -> Array:
    # A uint32 hash of the bits of `x` (exact data, identical on every code path that steps
    # the same example), mixed by odd multipliers so that the position of each value counts.
    bits = jax.lax.bitcast_convert_type(jnp.asarray(x), jnp.uint32).ravel()
    mult = (2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1) * jnp.uint32(0x9E3779B1)
    return jnp.sum((bits ^ (bits >> 16)) * mult, dtype=jnp.uint32)


def _contract_pair(u, v, g_r):
    c = jnp.vdot(g_r, u.astype(g_r.dtype))
    return jtu.tree_map(lambda a: c.astype(a.dtype) * a, v)


def _dot(a, b) -> Array:
    return jnp.sum(jnp.stack([jnp.vdot(x, y) for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b))]))


def _norm(tree) -> Array:
    leaves = jtu.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in leaves))
