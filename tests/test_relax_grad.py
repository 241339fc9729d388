"""`jax.grad` through `nd.relax` differentiates the steady state by the implicit function
theorem (an `nd.adjoint` solve), not through the loop: it matches the dense float64
reference in the parameters and finite differences in the input, also under vmap."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import assert_tree_close, dense_ift_grad


@pytest.mark.parametrize("adjoint", [None, nd.adjoint.DenseLU()], ids=["default", "dense"])
def test_grad_through_relax_is_the_implicit_gradient(adjoint, getkey):
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    x, y = jr.uniform(getkey(), (3,)), jr.normal(getkey(), (2,))

    def loss(net, x):
        r, _ = nd.relax(net, x, adjoint=adjoint)
        return nd.losses.squared_error(net.readout(r), y)

    g = eqx.filter_grad(loss)(net, x)
    _, ref, _ = dense_ift_grad(net, x, y)
    assert_tree_close(eqx.filter(g, eqx.is_inexact_array), ref, rtol=1e-7, atol=1e-10, what="params")
    gx = jax.grad(loss, argnums=1)(net, x)
    eps = 1e-6
    fd = np.array([(loss(net, x + eps * e) - loss(net, x - eps * e)) / (2 * eps) for e in jnp.eye(3)])
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-9)


def test_grad_through_vmapped_relax(getkey):
    net = nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, key=getkey())
    xs, ys = jr.uniform(getkey(), (4, 3)), jr.normal(getkey(), (4, 2))

    def mean_loss(net):
        rs, _ = jax.vmap(lambda x: nd.relax(net, x))(xs)
        return jnp.mean(jax.vmap(lambda r, y: nd.losses.squared_error(net.readout(r), y))(rs, ys))

    g = eqx.filter_grad(mean_loss)(net)
    _, ref, _ = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=nd.RBP())
    assert_tree_close(eqx.filter(g, eqx.is_inexact_array), ref, rtol=1e-7, atol=1e-10, what="vmapped")


def test_a_wrong_adjoint_is_named():
    net = nd.networks.CTRNN(6, 3, 2, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="`adjoint` must be an nd.adjoint strategy"):
        nd.relax(net, jnp.ones(3), adjoint="ift")
