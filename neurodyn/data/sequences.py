"""Sequence tasks, generated procedurally in JAX (offline, pure, vmappable over keys).

Each function returns `(xs, ys, weights)` for one sequence: inputs `(T, n_in)`, targets
`(T, n_out)` and per-time loss weights `(T,)` (zero where nothing is asked), ready for
`nd.Trajectory(loss, ts=1..T, weights=weights)` (one input per unit of time) or for
`nd.online.fit_online(net, xs, ys, weights=weights)`. Batch with
`jax.vmap(lambda k: task(k, ...))(jr.split(key, B))`. `dtype` defaults to JAX's default
floating dtype (float32, or float64 with x64 enabled).
"""

from typing import TypeAlias

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, DTypeLike, Float, PRNGKeyArray

from .._misc import default_floating_dtype, tree_dtype
from ..networks import AbstractNetwork


# One sequence: inputs `(T, n_in)`, targets `(T, n_out)`, per-time loss weights `(T,)`.
SequenceTask: TypeAlias = tuple[Float[Array, "T n_in"], Float[Array, "T n_out"], Float[Array, " T"]]


def _dtype(dtype: DTypeLike | None) -> DTypeLike:
    return default_floating_dtype() if dtype is None else dtype


def adding_problem(key: PRNGKeyArray, T: int = 20, *, dtype: DTypeLike | None = None) -> SequenceTask:
    """Hochreiter & Schmidhuber's adding problem.

    Channel 0 holds `U(0, 1)` values, channel 1 marks two positions (one in each half);
    the target at the last step is the sum of the two marked values, the only weighted
    time. Predicting the mean (1) gives a squared error `E[(s - 1)^2] = 1/6`
    (`1/12` with `nd.losses.squared_error`'s factor 1/2).

    **Returns:** `xs (T, 2)`, `ys (T, 1)` (zero except the last step), `weights (T,)`
    (one-hot on the last step).
    """
    dtype = _dtype(dtype)
    kv, k1, k2 = jr.split(key, 3)
    values = jr.uniform(kv, (T,), dtype)
    i = jr.randint(k1, (), 0, T // 2)
    j = jr.randint(k2, (), T // 2, T)
    marks = jnp.zeros((T,), dtype).at[i].set(1).at[j].set(1)
    xs = jnp.stack([values, marks], axis=1)
    ys = jnp.zeros((T, 1), dtype).at[-1, 0].set(values[i] + values[j])
    weights = jnp.zeros((T,), dtype).at[-1].set(1)
    return xs, ys, weights


def copy_task(
    key: PRNGKeyArray, length: int = 5, n_symbols: int = 4, delay: int = 5, *, dtype: DTypeLike | None = None
) -> SequenceTask:
    """Copy task: `length` random symbols (one-hot), `delay` blank steps, a go cue, then
    the network must reproduce the symbols in order.

    **Returns:** with `T = 2 length + delay + 1`: `xs (T, n_symbols + 1)` (the last channel
    is the cue), `ys (T, n_symbols)` (one-hot symbols during the last `length` steps, zero
    before), `weights (T,)` (one on the recall steps).
    """
    dtype = _dtype(dtype)
    T = 2 * length + delay + 1
    symbols = jr.randint(key, (length,), 0, n_symbols)
    onehot = jax.nn.one_hot(symbols, n_symbols, dtype=dtype)
    xs = jnp.zeros((T, n_symbols + 1), dtype)
    xs = xs.at[:length, :n_symbols].set(onehot)
    xs = xs.at[length + delay, n_symbols].set(1)
    ys = jnp.zeros((T, n_symbols), dtype).at[T - length :].set(onehot)
    weights = jnp.zeros((T,), dtype).at[T - length :].set(1)
    return xs, ys, weights


def delayed_xor(key: PRNGKeyArray, delay: int = 4, *, dtype: DTypeLike | None = None) -> SequenceTask:
    """Delayed XOR: two bits (±1 on the single input channel) at steps 0 and `1 + delay`,
    then `delay` blank steps; the target at the last step is their XOR, `-a b` (±1).
    Predicting 0 gives a squared error of 1 (1/2 with the factor 1/2).

    **Returns:** with `T = 2 + 2 delay`: `xs (T, 1)`, `ys (T, 1)`, `weights (T,)` (one-hot
    on the last step).
    """
    dtype = _dtype(dtype)
    bits = jr.bernoulli(key, 0.5, (2,)).astype(dtype) * 2 - 1
    T = 2 + 2 * delay
    xs = jnp.zeros((T, 1), dtype).at[0, 0].set(bits[0]).at[1 + delay, 0].set(bits[1])
    ys = jnp.zeros((T, 1), dtype).at[-1, 0].set(-bits[0] * bits[1])
    weights = jnp.zeros((T,), dtype).at[-1].set(1)
    return xs, ys, weights


def teacher_rnn(key: PRNGKeyArray, teacher: AbstractNetwork, T: int = 100, *, dt: float = 1.0) -> SequenceTask:
    """A stream to mimic: `N(0, 1)` inputs through a fixed `teacher` network, one Euler step
    of size `dt` per input from `teacher.init_state` (with `dt = 1` exactly what
    `nd.rollout(teacher, xs, ts=1..T, solver=diffrax.Euler(), dt0=1.0)` returns); the
    targets are the teacher's readouts at every step. A student of the same family can
    reach zero loss.

    **Returns:** `xs (T, teacher.n_in)`, `ys (T, teacher.n_out)`, `weights (T,)` (ones),
    in the teacher's dtype.
    """
    dtype = tree_dtype(teacher)
    xs = jr.normal(key, (T, teacher.n_in), dtype)

    def step(r, x):
        r = r + dt * teacher(0.0, r, x)
        return r, teacher.readout(r)

    _, ys = jax.lax.scan(step, teacher.init_state(xs[0]), xs)
    return xs, ys, jnp.ones((T,), dtype)
