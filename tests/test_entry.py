"""The entry points called from plain Python: `entry_jit`'s dispatch (arrays traced, every
other leaf static), and top-level calls that agree with the same calls inside a user's jit,
whatever form the data comes in."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import assert_tree_close
from neurodyn._misc import entry_jit


class _Scaled(eqx.Module):
    w: jax.Array
    k: float  # a non-array leaf: static under entry_jit, as under eqx.filter_jit
    n: int = eqx.field(static=True)


def test_entry_jit_traces_arrays_and_keys_on_everything_else():
    traces = []

    def f(m, x, shift):
        traces.append(None)
        return m.k * m.w * x + shift + m.n

    g = entry_jit(f)
    m, x = _Scaled(jnp.arange(3.0, dtype=jnp.float32), 2.0, 1), jnp.ones(3, jnp.float32)
    np.testing.assert_array_equal(g(m, x, 0.5), f(m, x, 0.5))
    assert len(traces) == 2  # f itself, then its one trace
    g(eqx.tree_at(lambda t: t.w, m, jnp.zeros(3, jnp.float32)), 2 * x, 0.5)  # new array values: no new trace
    g(m, np.ones(3, np.float32), 0.5)  # a numpy array is an array leaf too
    assert len(traces) == 2
    g(m, x, 1.5)  # a new static value traces again, as would a new static field or leaf
    g(_Scaled(m.w, 3.0, 1), x, 0.5)
    g(_Scaled(m.w, 2.0, 2), x, 0.5)
    assert len(traces) == 5
    # Transparent to the transformations around it.
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(g(m, x, 0.5)))(x), m.k * m.w)
    np.testing.assert_allclose(
        jax.vmap(lambda x: g(m, x, 0.5))(jnp.stack([x, 2 * x])), jnp.stack([f(m, x, 0.5), f(m, 2 * x, 0.5)])
    )


def _net_and_data():
    k1, k2, k3 = jr.split(jr.PRNGKey(3), 3)
    net = nd.networks.Hopfield(5, 7, 3, key=k1)
    return net, jr.uniform(k2, (4, 5)), jr.uniform(k3, (4, 3))


def _close(a, b):
    # Every leaf as float64 (info holds flags and counts): an integer that differs by one
    # fails the bound as surely as an exact comparison.
    as_float = lambda t: jax.tree.map(lambda v: np.asarray(v, np.float64), t)  # noqa: E731
    assert_tree_close(as_float(a), as_float(b), rtol=1e-6, atol=1e-7, what="top level against jitted")


@pytest.mark.parametrize("entry", ["relax", "value_and_grad", "batch_value_and_grad"])
def test_top_level_calls_match_the_jitted_call(entry):
    net, xs, ys = _net_and_data()
    obj, est = nd.SteadyState(), nd.RBP()
    call = {
        "relax": lambda net, xs, ys: nd.relax(net, xs[0]),
        "value_and_grad": lambda net, xs, ys: nd.value_and_grad(net, xs[0], ys[0], objective=obj, estimator=est),
        "batch_value_and_grad": lambda net, xs, ys: nd.batch_value_and_grad(net, xs, ys, objective=obj, estimator=est),
    }[entry]
    ref = eqx.filter_jit(call)(net, xs, ys)
    _close(call(net, xs, ys), ref)
    # Data as numpy float64 or nested lists is converted and cast to the network's dtype.
    _close(call(net, np.asarray(xs, np.float64), np.asarray(ys, np.float64)), ref)
    _close(call(net, np.asarray(xs).tolist(), np.asarray(ys).tolist()), ref)


def test_relax_default_initial_state_is_init_state():
    net, xs, _ = _net_and_data()
    r, info = nd.relax(net, xs[0])
    r0, info0 = nd.relax(net, xs[0], r0=net.init_state(xs[0]))
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_array_equal(info["steps"], info0["steps"])


def test_rollout_default_initial_state_is_init_state():
    k1, k2 = jr.split(jr.PRNGKey(4))
    net = nd.networks.CTRNN(6, 3, 2, key=k1)
    xs, ts = jr.normal(k2, (5, 3)), jnp.arange(1.0, 6.0)
    ys, _ = nd.rollout(net, xs, ts)
    ys0, _ = nd.rollout(net, xs, ts, r0=net.init_state(xs[0]))
    np.testing.assert_array_equal(ys, ys0)
