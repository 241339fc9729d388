"""Online learning with RTRL: the parameters change during the trajectory.

Real-time recurrent learning (Williams & Zipser 1989): the state `r` and its sensitivities
`p = dr/dw` run forward with the data stream; at every input the instantaneous gradient
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

from . import losses as _losses
from ._dynamics import check_input
from ._misc import tree_dtype
from .rtrl import (
    AbstractSensitivity,
    contract,
    Exact,
    integrate_interval_joint,
    joint_step,
    sensitivity_aux,
    zero_sensitivities,
)


def fit_online(
    net,
    xs,
    ys,
    *,
    optimizer: optax.GradientTransformation,
    loss=_losses.squared_error,
    weights=None,
    resets=None,
    update_every: int = 1,
    sensitivity: AbstractSensitivity = Exact(),
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    dt0: float = 1.0,
    steps_per_input: int = 1,
):
    r"""Trains `net` online on one stream with RTRL: the parameters change while it runs.

    At input `k` the joint state `(r, p)` advances one interval (`steps_per_input` solver
    steps of `dt0` with `xs[k]` held), the instantaneous gradient
    `g_k = alpha_k (dl_k/dr) p_k + alpha_k dl_k/dw|_readout` is added to an accumulator,
    and every `update_every` inputs the accumulated gradient goes through `optimizer` and
    updates `w`. The state and the sensitivities carry over the update (real-time
    recurrent learning, Williams & Zipser 1989): no history is stored and nothing runs
    backwards, so memory is O(nm) whatever the stream length.

    With one update at the end of the stream (`update_every = T`) the update is exactly
    one optimiser step with the trajectory gradient of `nd.RTRL()` (= `nd.BPTT()`).

    **Arguments:**

    - `net`: the network to train.
    - `xs`: inputs `(T, n_in)`, one per interval; `ys`: targets `(T, n_out)`.
    - `optimizer`: an optax optimiser (e.g. `optax.adam(3e-3)`).
    - `loss`: the per-time loss `(prediction, target) -> scalar`; `weights`: `alpha_k`,
      `(T,)` (default ones; zero where nothing is asked).
    - `resets`: optional booleans `(T,)`: where true, the state and the sensitivities restart
      from `net.init_state` and `p = 0` before input `k` (episode boundaries of a stream of
      independent sequences; the parameters and optimiser state carry on).
    - `update_every`: apply the accumulated gradient every this many inputs.
    - `sensitivity`: `nd.rtrl.Exact()` (default), `nd.rtrl.SnAp1()`,
      `nd.rtrl.SparseSnAp1()` (O(m) memory), `nd.rtrl.Diagonal()`, `nd.rtrl.RFLO()` (O(m)
      memory and O(m + cost(F)) time per step) or `nd.rtrl.UORO(key)` (unbiased rank-one,
      O(n + m) memory and O(cost(F) + m) time per step).
    - `solver`, `dt0`, `steps_per_input`: each input is held for `steps_per_input` steps of
      `dt0` (the default Euler, `dt0 = 1`, one step: the discrete-time network).

    **Returns:**

    `(net, losses)`: the trained network and the weighted per-time losses incurred online,
    `(T,)`, each measured before the update it triggers (the online learning curve).

    A `lax.scan` over the stream: jit it with `eqx.filter_jit`, vmap it over seeds with
    `eqx.filter_vmap` (networks, streams). `online_init` and `online_steps` are its two
    halves: run a long stream in pieces (checkpointing the carry between them, as
    `experiments.online_rtrl` does through `nd.training.train_loop`) to the same result.

    !!! warning

        Each step costs exact RTRL's O(n^2 m) (O(n^4) for a CTRNN): online learning with the
        exact sensitivities is for small networks. The sensitivities after an update were
        computed with the old weights, so a learning rate too large for that lag diverges.
    """
    _check_sensitivity(sensitivity)
    if int(update_every) < 1 or int(steps_per_input) < 1:
        raise ValueError(
            f"update_every and steps_per_input must be positive integers, got {update_every} and {steps_per_input}."
        )
    xs = check_input(net, xs, sequence=True, what="xs")
    carry = online_init(net, xs[0], optimizer=optimizer, sensitivity=sensitivity)
    carry, losses = online_steps(
        net,
        carry,
        xs,
        ys,
        optimizer=optimizer,
        loss=loss,
        weights=weights,
        resets=resets,
        update_every=update_every,
        sensitivity=sensitivity,
        solver=solver,
        dt0=dt0,
        steps_per_input=steps_per_input,
    )
    return eqx.combine(carry[0], eqx.filter(net, eqx.is_inexact_array, inverse=True)), losses


def _check_sensitivity(sensitivity):
    if not isinstance(sensitivity, AbstractSensitivity):
        raise ValueError(
            f"sensitivity must be nd.rtrl.Exact(), nd.rtrl.SnAp1(), nd.rtrl.SparseSnAp1(), "
            f"nd.rtrl.Diagonal(), nd.rtrl.RFLO() or nd.rtrl.UORO(key), got {sensitivity!r}."
        )


def online_init(net, x0, *, optimizer: optax.GradientTransformation, sensitivity: AbstractSensitivity = Exact()):
    """The state of an online run before its first input, a tuple of arrays to pass to
    `online_steps` (and to checkpoint between pieces of a stream): `(params, opt_state,
    (r, p), accumulated gradient, k)`, with `r = net.init_state(x0)`, `p = 0` and `k = 0`
    inputs seen."""
    _check_sensitivity(sensitivity)
    x0 = check_input(net, jnp.asarray(x0)[None], sequence=True, what="x0")[0]
    dtype = tree_dtype(net)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    aux = sensitivity_aux(sensitivity, params, static, net.n_state, net.n_in, dtype)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes its int32 count with floats
        opt_state = optimizer.init(params)
    state0 = (net.init_state(x0), zero_sensitivities(sensitivity, params, net.n_state, aux))
    return params, opt_state, state0, jtu.tree_map(jnp.zeros_like, params), jnp.asarray(0)


def online_steps(
    net,
    carry,
    xs,
    ys,
    *,
    optimizer: optax.GradientTransformation,
    loss=_losses.squared_error,
    weights=None,
    resets=None,
    update_every: int = 1,
    sensitivity: AbstractSensitivity = Exact(),
    solver: diffrax.AbstractSolver = diffrax.Euler(),
    dt0: float = 1.0,
    steps_per_input: int = 1,
):
    """Continues the online run `carry` (from `online_init`, or a previous `online_steps`)
    over the next piece of the stream, `xs (T, n_in)`, `ys (T, n_out)`: `(carry, losses)`.
    `net` is the network the run started from (its structure, and what the sensitivity
    strategy reads once per run); the other arguments are `fit_online`'s and must be the
    same for every piece. Running a stream in pieces, each continuing the last one's carry,
    is the same computation as one `fit_online` over the whole stream: checkpoint the carry
    between pieces and an interrupted stream resumes where it stopped."""
    _check_sensitivity(sensitivity)
    if int(update_every) < 1 or int(steps_per_input) < 1:
        raise ValueError(
            f"update_every and steps_per_input must be positive integers, got {update_every} and {steps_per_input}."
        )
    xs = check_input(net, xs, sequence=True, what="xs")
    dtype = tree_dtype(net)
    ys = jnp.asarray(ys, dtype)
    T = xs.shape[0]
    if ys.shape != (T, net.n_out):
        raise ValueError(f"ys has shape {ys.shape}; expected (T, n_out) = {(T, net.n_out)}.")
    weights = jnp.ones((T,), dtype) if weights is None else jnp.asarray(weights, dtype)
    if weights.shape != (T,):
        raise ValueError(f"weights has shape {weights.shape}; expected (T,) = ({T},).")
    resets = jnp.zeros((T,), bool) if resets is None else jnp.asarray(resets, bool)
    if resets.shape != (T,):
        raise ValueError(f"resets has shape {resets.shape}; expected (T,) = ({T},).")
    params0, static = eqx.partition(net, eqx.is_inexact_array)
    aux = sensitivity_aux(sensitivity, params0, static, net.n_state, net.n_in, dtype)
    dt = jnp.asarray(dt0, dtype)

    def term(params, r, y, alpha):
        return alpha * loss(eqx.combine(params, static).readout(r), y)

    def body(carry, inp):
        params, opt_state, state, acc, k = carry
        x, y, alpha, reset = inp
        # An episode boundary restarts r and p (a random strategy's step count runs on).
        fresh = (eqx.combine(params, static).init_state(x), sensitivity.restart(state[1], aux))
        state = jtu.tree_map(lambda a, b: jnp.where(reset, a, b), fresh, state)
        _, step = joint_step(solver, params, static, sensitivity, aux)
        t0 = k.astype(dtype) * dt * steps_per_input
        state = integrate_interval_joint(step, state, x, t0, dt, steps_per_input)
        r, p = state
        loss_k, (g_direct, g_r) = jax.value_and_grad(term, argnums=(0, 1))(params, r, y, alpha)
        acc = jtu.tree_map(lambda a, b, c: a + b + c, acc, g_direct, contract(sensitivity, p, g_r, aux))

        def update(args):
            params, opt_state, acc = args
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimizer.update(acc, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, jtu.tree_map(jnp.zeros_like, acc)

        do_update = (k + 1) % update_every == 0
        params, opt_state, acc = jax.lax.cond(do_update, update, lambda a: a, (params, opt_state, acc))
        return (params, opt_state, state, acc, k + 1), loss_k

    return jax.lax.scan(body, tuple(carry), (xs, ys, weights, resets))
