import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import neurodyn as nd
from helpers import assert_tree_close, EULER1


def test_one_update_at_the_end_is_one_gradient_step_with_the_rtrl_gradient(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    T = 6
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    w = jnp.linspace(0.5, 1.0, T)
    lr = 0.1
    trained, losses = nd.online.fit_online(net, xs, ys, optimizer=optax.sgd(lr), weights=w, update_every=T)
    loss, grads, _ = nd.value_and_grad(net, xs, ys, objective=nd.Trajectory(ts=np.arange(1, T + 1), weights=w), estimator=nd.BPTT(), **EULER1)
    expected = jax.tree.map(lambda p, g: p - lr * g, eqx.filter(net, eqx.is_inexact_array), grads)
    assert_tree_close(eqx.filter(trained, eqx.is_inexact_array), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(losses), loss, rtol=1e-12)


def test_online_rtrl_learns_to_mimic_a_teacher(getkey):
    # The stated result (README): mimicking an 8-unit teacher RNN on a 3000-step stream,
    # the online loss falls about tenfold (0.075 -> 0.0075 on the first/last 300 steps).
    teacher = nd.networks.CTRNN(8, 2, 1, gain=0.9, key=jr.PRNGKey(0))
    student = nd.networks.CTRNN(8, 2, 1, gain=0.5, key=jr.PRNGKey(1))
    xs, ys, _ = nd.data.sequences.teacher_rnn(jr.PRNGKey(2), teacher, T=3000)
    _, losses = eqx.filter_jit(nd.online.fit_online)(student, xs, ys, optimizer=optax.adam(3e-3))
    first, last = float(jnp.mean(losses[:300])), float(jnp.mean(losses[-300:]))
    assert last < 0.2 * first, (first, last)
