"""Sequence tasks, generated procedurally in JAX (offline, vmappable over keys).

Each returns `(xs, ys, weights)`: inputs `(T, n_in)`, targets `(T, n_out)` and per-time loss
weights `(T,)` (zero where nothing is asked), ready for `nd.Trajectory(loss, ts, weights)`
with `ts = 1..T` (one input per unit of time).
"""

import jax
import jax.numpy as jnp
import jax.random as jr


def adding_problem(key, T: int = 20):
    """Hochreiter & Schmidhuber's adding problem: channel 0 holds uniform values, channel 1
    marks two positions (one in each half); the target at the last step is the sum of the
    two marked values. Chance (predicting the mean, 1) gives a squared error of about 1/12."""
    kv, k1, k2 = jr.split(key, 3)
    values = jr.uniform(kv, (T,))
    i = jr.randint(k1, (), 0, T // 2)
    j = jr.randint(k2, (), T // 2, T)
    marks = jnp.zeros((T,)).at[i].set(1.0).at[j].set(1.0)
    xs = jnp.stack([values, marks], axis=1)
    ys = jnp.zeros((T, 1)).at[-1, 0].set(values[i] + values[j])
    weights = jnp.zeros((T,)).at[-1].set(1.0)
    return xs, ys, weights


def copy_task(key, length: int = 5, n_symbols: int = 4, delay: int = 5):
    """Copy task: `length` random symbols (one-hot), a blank delay, a go cue, then the
    network must reproduce the symbols. Inputs have `n_symbols + 1` channels (the last is the
    cue); targets are one-hot over the symbols during the recall period only."""
    T = 2 * length + delay + 1
    symbols = jr.randint(key, (length,), 0, n_symbols)
    onehot = jax.nn.one_hot(symbols, n_symbols)
    xs = jnp.zeros((T, n_symbols + 1))
    xs = xs.at[:length, :n_symbols].set(onehot)
    xs = xs.at[length + delay, n_symbols].set(1.0)
    ys = jnp.zeros((T, n_symbols)).at[T - length :].set(onehot)
    weights = jnp.zeros((T,)).at[T - length :].set(1.0)
    return xs, ys, weights


def delayed_xor(key, delay: int = 4):
    """Two bits presented one after the other (±1 on channel 0) with `delay` blank steps in
    between and after; the target at the last step is their XOR (±1)."""
    bits = jr.bernoulli(key, 0.5, (2,)).astype(jnp.result_type(float)) * 2 - 1
    T = 2 + 2 * delay
    xs = jnp.zeros((T, 1)).at[0, 0].set(bits[0]).at[1 + delay, 0].set(bits[1])
    ys = jnp.zeros((T, 1)).at[-1, 0].set(-bits[0] * bits[1])
    weights = jnp.zeros((T,)).at[-1].set(1.0)
    return xs, ys, weights


def teacher_rnn(key, teacher, T: int = 100, *, dt: float = 1.0):
    """A stream to mimic: random inputs through a fixed `teacher` network (Euler steps of
    size `dt`, one per input); the targets are the teacher's readouts at every step."""
    xs = jr.normal(key, (T, teacher.n_in))

    def step(r, x):
        r = r + dt * teacher(0.0, r, x)
        return r, teacher.readout(r)

    _, ys = jax.lax.scan(step, teacher.init_state(xs[0]), xs)
    return xs, ys, jnp.ones((T,))
