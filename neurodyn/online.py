"""Online learning with RTRL: the parameters change during the trajectory.

Real-time recurrent learning (seed 004's 实时递归学习): the state `r` and its sensitivities
`P = (dr/dw)^T` run forward with the data stream; at every input the instantaneous gradient
`g_k = alpha_k (dl_k/dr) p_k + dl_k/dw|_readout` is accumulated and, every `update_every`
inputs, an optax step updates `w`. The sensitivities carry over the update (the usual
online-RTRL approximation: they were computed with the old weights), so no backward pass
and no stored history is ever needed: memory O(nm), independent of the stream length.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jax.flatten_util import ravel_pytree

from . import losses as _losses
from ._dynamics import check_input
from ._misc import tree_dtype
from .estimators._rtrl import (
    Exact,
    integrate_interval_joint,
    make_joint_step,
    sensitivity_mask,
)


def fit_online(
    net,
    xs,
    ys,
    *,
    optimizer: optax.GradientTransformation,
    loss=_losses.squared_error,
    weights=None,
    update_every: int = 1,
    sensitivity=Exact(),
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    dt0: float = 1.0,
    steps_per_input: int = 1,
):
    """Trains `net` online on one stream with RTRL.

    **Arguments:**

    - `net`: the network; `xs` `(T, n_in)` inputs, one per unit of time; `ys` `(T, n_out)`.
    - `optimizer`: an optax optimiser (e.g. `optax.adam(1e-2)`).
    - `loss`: per-time loss; `weights` `(T,)` per-time weights (default ones).
    - `update_every`: apply the accumulated gradient every this many inputs.
    - `sensitivity`: `nd.rtrl.Exact()`, `SnAp1()` or `Diagonal()`.
    - `solver`, `dt0`, `steps_per_input`: each input is held for `steps_per_input` steps of
      `dt0` (Euler, `dt0 = 1`, one step: the discrete-time network).

    **Returns:**

    `(net, losses)`: the trained network and the per-time losses incurred online, `(T,)`
    (each measured before the update that it triggers).

    Jit it with `eqx.filter_jit`; it is a `lax.scan` over the stream, vmappable over seeds.
    """
    xs = check_input(net, xs, sequence=True, what="xs")
    dtype = tree_dtype(net)
    ys = jnp.asarray(ys, dtype)
    T = xs.shape[0]
    weights = jnp.ones((T,), dtype) if weights is None else jnp.asarray(weights, dtype)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    w0, unravel = ravel_pytree(params)
    n = net.n_state
    mask = sensitivity_mask(sensitivity, static, w0, unravel, n, dtype, xs[0])
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    dt = jnp.asarray(dt0 / 1.0, dtype)

    def body(carry, inp):
        params, opt_state, r, P, acc, k = carry
        x, y, alpha = inp
        w, _ = ravel_pytree(params)
        step = make_joint_step(solver, static, w, unravel, sensitivity, mask)
        t0 = k.astype(dtype) * dt * steps_per_input
        r, P = integrate_interval_joint(step, (r, P), x, t0, dt, steps_per_input)

        def loss_of(p, r):
            return alpha * loss(eqx.combine(p, static).readout(r), y)

        loss_k, (g_direct, g_r) = jax.value_and_grad(loss_of, argnums=(0, 1))(params, r)
        g = jtu.tree_map(jnp.add, g_direct, unravel(P @ g_r))
        acc = jtu.tree_map(jnp.add, acc, g)
        do_update = (k + 1) % update_every == 0

        def update(args):
            params, opt_state, acc = args
            # optax mixes its int32 step count with floats; allow that under strict promotion.
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimizer.update(acc, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, jtu.tree_map(jnp.zeros_like, acc)

        params, opt_state, acc = jax.lax.cond(do_update, update, lambda a: a, (params, opt_state, acc))
        return (params, opt_state, r, P, acc, k + 1), loss_k

    r0 = net.init_state(xs[0])
    P0 = jnp.zeros((w0.shape[0], n), dtype)
    acc0 = jtu.tree_map(jnp.zeros_like, params)
    carry = (params, opt_state, r0, P0, acc0, jnp.asarray(0))
    (params, *_), losses = jax.lax.scan(body, carry, (xs, ys, weights))
    return eqx.combine(params, static), losses
