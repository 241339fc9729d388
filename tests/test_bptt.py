"""BPTT against exact references, finite differences and the backward recursion of Werbos (1990)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import (
    assert_tree_close,
    directional,
    EULER1,
    finite_difference_grad,
    small_networks,
)


NETWORKS = small_networks(jr.PRNGKey(1234))
NET_IDS = [n for n, _ in NETWORKS]


def _example(net, key, T=None):
    kx, ky = jr.split(key)
    if T is None:
        return jr.uniform(kx, (net.n_in,)), jr.normal(ky, (net.n_out,))
    return jr.uniform(kx, (T, net.n_in)), jr.normal(ky, (T, net.n_out))


@pytest.mark.parametrize("name,net", NETWORKS[:2], ids=NET_IDS[:2])
def test_bptt_agrees_with_finite_differences(name, net, getkey):
    T = 3
    xs, ys = _example(net, getkey(), T)
    obj = nd.Trajectory(ts=[1.0, 2.0, 3.0])
    _, grads, _ = nd.value_and_grad(net, xs, ys, objective=obj)

    def f(n):
        return nd.value_and_grad(n, xs, ys, objective=obj)[0]

    for d, fd in finite_difference_grad(f, net, eps=1e-6, key=getkey()):
        np.testing.assert_allclose(directional(grads, d), fd, rtol=1e-6, atol=1e-9)
    x, y = _example(net, getkey())
    _, grads, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState())

    def g(n):
        return nd.value_and_grad(n, x, y, objective=nd.SteadyState())[0]

    for d, fd in finite_difference_grad(g, net, eps=1e-6, key=getkey()):
        np.testing.assert_allclose(directional(grads, d), fd, rtol=1e-5, atol=1e-8)


def test_bptt_is_the_backward_recursion(getkey):
    # Werbos (1990): x(t) = f(W x(t-1) + b(t)); s(t) = D(t)(dR/dx(t) + W^T s(t+1)),
    # dW = sum_t s(t) x(t-1)^T, db(t) = s(t). Here b(t) = U x_in(t) + b and R = -l.
    n, T = 5, 6
    net = nd.networks.CTRNN(n, 2, 2, nd.activations.tanh, "rate", key=getkey())
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    obj = nd.Trajectory(nd.losses.squared_error, np.arange(1, T + 1))
    _, grads, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(), **EULER1)

    x = [jnp.zeros(n)]
    D = [None]
    for t in range(1, T + 1):
        z = net.W @ x[-1] + net.U @ xs[t - 1] + net.b
        x.append(jnp.tanh(z))
        D.append(1 - jnp.tanh(z) ** 2)
    dR_dx = [None] + [-(net.V.T @ (net.V @ x[t] + net.c - ys[t - 1])) for t in range(1, T + 1)]
    s = [None] * (T + 2)
    s[T + 1] = jnp.zeros(n)
    for t in range(T, 0, -1):
        s[t] = D[t] * (dR_dx[t] + net.W.T @ s[t + 1])
    dW = sum(jnp.outer(s[t], x[t - 1]) for t in range(1, T + 1))
    db = sum(s[t] for t in range(1, T + 1))
    # Gradient descent on l is ascent on R: grads = -dW.
    np.testing.assert_allclose(grads.W, -dW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.b, -db, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("checkpoints", [None, 2, 5])
def test_checkpointing_does_not_change_the_gradient(checkpoints, getkey):
    net = nd.networks.CTRNN(6, 2, 2, key=getkey())
    xs, ys = jr.normal(getkey(), (8, 2)), jr.normal(getkey(), (8, 2))
    obj = nd.Trajectory(ts=np.arange(1, 9) * 0.5)
    _, g_ref, _ = nd.value_and_grad(net, xs, ys, objective=obj)
    _, g, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(checkpoints=checkpoints))
    assert_tree_close(g, g_ref, rtol=1e-12, atol=1e-14)
    x, y = xs[0], ys[0]
    _, g_ref, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState())
    _, g, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.BPTT(checkpoints=checkpoints))
    assert_tree_close(g, g_ref, rtol=1e-10, atol=1e-13)


def test_truncated_bptt_trajectory_is_the_depth_h_recursion(getkey):
    # Reference: each l_k differentiated through the last h intervals only, by brute force.
    n, T, h = 4, 6, 2
    net = nd.networks.CTRNN(n, 2, 2, key=getkey())
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    obj = nd.Trajectory(ts=np.arange(1, T + 1))
    _, g, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(truncation=h), **EULER1)
    rs, _ = nd.rollout(net, xs, np.arange(1, T + 1), output="state", **EULER1)

    def lk(net, k):
        first = max(k - h + 1, 0)
        r = jax.lax.stop_gradient(rs[first - 1]) if first > 0 else jnp.zeros(n)
        for i in range(first, k + 1):
            r = r + net(0.0, r, xs[i])
        return nd.losses.squared_error(net.readout(r), ys[k])

    ref = eqx.filter_grad(lambda net: sum(lk(net, k) for k in range(T)))(net)
    assert_tree_close(g, ref, rtol=1e-10, atol=1e-12)
    _, g_full, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(truncation=T), **EULER1)
    _, g_exact, _ = nd.value_and_grad(net, xs, ys, objective=obj, **EULER1)
    assert_tree_close(g_full, g_exact, rtol=1e-10, atol=1e-12)


def test_truncated_bptt_steady_state_converges_in_h(getkey):
    net = nd.networks.CTRNN(6, 2, 2, key=getkey())
    x, y = jr.normal(getkey(), (2,)), jr.normal(getkey(), (2,))
    _, g_exact, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState())
    errs = []
    for h in (2, 8, 32):
        _, g, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.BPTT(truncation=h))
        errs.append(float(jnp.linalg.norm(g.W - g_exact.W)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6 * float(jnp.linalg.norm(g_exact.W)) + 1e-9


def test_layered_truncated_bptt_with_euler_dt1_is_exact_after_L_steps(getkey):
    net = nd.networks.Layered((3, 4, 2), key=getkey())
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, g_exact, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState())
    _, g, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.BPTT(truncation=2), **EULER1)
    assert_tree_close(g, g_exact, rtol=1e-8, atol=1e-10)


def test_jit_vmap_grad_compositions(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    B = 3
    xs, ys = jr.normal(getkey(), (B, 2)), jr.normal(getkey(), (B, 2))
    obj = nd.SteadyState()

    def one(net, x, y):
        return nd.value_and_grad(net, x, y, objective=obj)

    losses, grads, info = eqx.filter_jit(jax.vmap(one, in_axes=(None, 0, 0)))(net, xs, ys)
    assert losses.shape == (B,) and info["converged"].shape == (B,)
    mean_grad = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)

    # grad(vmap): differentiate the mean loss of the batch directly through the relaxation.
    def batch_loss(net):
        return jnp.mean(jax.vmap(lambda x, y: one(net, x, y)[0])(xs, ys))

    g2 = eqx.filter_grad(batch_loss)(net)
    assert_tree_close(mean_grad, g2, rtol=1e-8, atol=1e-12)

    # vmap(grad): per-example grads of the loss equal the estimator's grads.
    g3 = jax.vmap(lambda x, y: eqx.filter_grad(lambda n: one(n, x, y)[0])(net))(xs, ys)
    assert_tree_close(grads, g3, rtol=1e-8, atol=1e-12)


def test_no_recompilation_on_second_call(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    obj = nd.SteadyState()

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(net, x, y):
        return nd.value_and_grad(net, x, y, objective=obj)

    for i in range(3):
        step(net, jr.normal(jr.PRNGKey(i), (2,)), jnp.zeros(2))


def test_float32_defaults_work(getkey):
    net = nd.networks.CTRNN(16, 3, 2, key=getkey())
    net32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net)
    x, y = jnp.ones(3, jnp.float32), jnp.zeros(2, jnp.float32)
    loss, g32, info = nd.value_and_grad(net32, x, y, objective=nd.SteadyState())
    assert bool(info["converged"]) and g32.W.dtype == jnp.float32
    _, g64, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState())
    assert_tree_close(jax.tree.map(lambda a: a.astype(jnp.float64), g32), g64, rtol=1e-3, atol=1e-5)
    xs = jnp.ones((3, 3), jnp.float32)
    _, g, info = nd.value_and_grad(
        net32, xs, jnp.zeros((3, 2), jnp.float32), objective=nd.Trajectory(ts=[1.0, 2.0, 3.0])
    )
    assert g.W.dtype == jnp.float32 and bool(info["converged"])


def test_diffrax_solvers_are_accepted(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    x, y = jnp.ones(2), jnp.zeros(2)
    grads = []
    for solver in (diffrax.Euler(), diffrax.Heun(), diffrax.Tsit5()):
        _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), solver=solver, dt0=0.2)
        assert bool(info["converged"])
        grads.append(g)
    # The steady state does not depend on the solver, nor does its exact gradient.
    assert_tree_close(grads[0], grads[2], rtol=1e-6, atol=1e-9)
    assert_tree_close(grads[1], grads[2], rtol=1e-6, atol=1e-9)
