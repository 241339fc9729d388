"""The shared estimator suite: every estimator against the exact references, on every
network family (`helpers.small_networks`), and against each other."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import (
    assert_tree_close,
    dense_ift_grad,
    fine_trajectory_grad,
    small_networks,
    steady_state_estimators,
    trajectory_estimators,
)


NETWORKS = small_networks(jr.PRNGKey(1234))
# The default suite checks every estimator on the base families; the later families (seed
# 004's, sparse, layered Hopfield) run in CI's slow step (the default suite's time budget).
BASE = ("ctrnn-rate", "ctrnn-current", "hopfield", "layered")


def _cases(estimators):
    return [
        pytest.param(e, n, est, net, id=f"{e}-{n}", marks=() if n in BASE else pytest.mark.slow)
        for e, est in estimators
        for n, net in NETWORKS
    ]


STEADY = _cases(steady_state_estimators())
TRAJ = _cases(trajectory_estimators())


def _example(net, key, T=None):
    kx, ky = jr.split(key)
    if T is None:
        return jr.uniform(kx, (net.n_in,)), jr.normal(ky, (net.n_out,))
    return jr.uniform(kx, (T, net.n_in)), jr.normal(ky, (T, net.n_out))


@pytest.mark.parametrize("est_name,net_name,est,net", STEADY)
def test_steady_state_matches_dense_ift(est_name, net_name, est, net, getkey):
    x, y = _example(net, getkey())
    loss, grads, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=est)
    ref_loss, ref_grads, _ = dense_ift_grad(net, x, y)
    assert bool(info["converged"])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-8)
    assert_tree_close(grads, ref_grads, rtol=1e-6, atol=1e-9, what=f"{est_name}/{net_name}")


@pytest.mark.parametrize("est_name,net_name,est,net", TRAJ)
def test_trajectory_matches_fine_reference(est_name, net_name, est, net, getkey):
    T = 4
    xs, ys = _example(net, getkey(), T)
    ts = np.array([0.5, 1.0, 1.5, 2.5])
    w = jnp.array([0.0, 1.0, 0.5, 2.0])
    obj = nd.Trajectory(nd.losses.squared_error, ts, w)
    loss, grads, info = nd.value_and_grad(net, xs, ys, objective=obj, estimator=est)
    ref_loss, ref_grads = fine_trajectory_grad(net, xs, ys, ts, weights=w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_tree_close(grads, ref_grads, rtol=1e-5, atol=1e-8, what=f"{est_name}/{net_name}")


@pytest.mark.parametrize("kind", ["ctrnn", "hopfield"])
@pytest.mark.parametrize("est_name,est", steady_state_estimators(), ids=[e for e, _ in steady_state_estimators()])
def test_vmap_grad_equals_grad_vmap(est_name, est, kind, getkey):
    # jax.grad of a weighted sum of vmapped losses is the same weighted sum of the returned
    # grads: the custom VJP's backward pass (which RBP and EP recompute from saved states,
    # scaled by the loss cotangent) must scale per example. The Hopfield case is EP's
    # energy-based update.
    if kind == "ctrnn":
        net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    else:
        net = nd.networks.Hopfield(2, 5, 2, key=getkey())
    xs, ys = jr.uniform(getkey(), (3, 2)), jr.normal(getkey(), (3, 2))
    c = jnp.array([0.5, -2.0, 3.0])

    def one(net, x, y):
        return nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=est)

    _, grads, info = eqx.filter_jit(jax.vmap(one, in_axes=(None, 0, 0)))(net, xs, ys)
    assert info["converged"].shape == (3,) and bool(jnp.all(info["converged"]))
    g_sum = eqx.filter_jit(eqx.filter_grad(lambda n: c @ jax.vmap(lambda x, y: one(n, x, y)[0])(xs, ys)))(net)
    expected = jax.tree.map(lambda g: jnp.tensordot(c, g, axes=1), grads)
    assert_tree_close(expected, g_sum, rtol=1e-10, atol=1e-13)
    # Unbatched: jax.grad of one example's loss is its grads.
    g_one = eqx.filter_grad(lambda n: one(n, xs[0], ys[0])[0])(net)
    assert_tree_close(jax.tree.map(lambda g: g[0], grads), g_one, rtol=1e-10, atol=1e-13)


def test_estimators_agree_with_each_other(getkey):
    net = nd.networks.Hopfield(3, 6, 2, key=getkey())
    x, y = _example(net, getkey())
    grads = {
        n: nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=e)[1]
        for n, e in steady_state_estimators()
    }
    names = list(grads)
    for a in names:
        for b in names:
            assert_tree_close(grads[a], grads[b], rtol=1e-6, atol=1e-9, what=f"{a} vs {b}")
