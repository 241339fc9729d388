"""Each seed-004 family: its Euler dt = 1 step is its discrete-time definition, written here
from the seed formulas. The estimator checks run over the families through
`helpers.small_networks` (tests/test_estimators.py, tests/test_rtrl.py, tests/test_bptt.py)."""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd


def _rollout_states(net, xs):
    rs, _ = nd.rollout(net, xs, np.arange(1, xs.shape[0] + 1), output="state", solver=diffrax.Euler(), dt0=1.0)
    return rs


def test_elman_is_the_seed_state_space_model(getkey):
    net = nd.networks.Elman(5, 3, 2, key=getkey())
    us = jr.normal(getkey(), (6, 3))
    rs = _rollout_states(net, us)
    x = jnp.zeros(5)
    for n in range(6):
        x = jax.nn.sigmoid(net.W_a @ x + net.W_b @ us[n] + net.b)  # x_{n+1} = a(x_n, u_n)
        np.testing.assert_allclose(rs[n], x, rtol=1e-12)
        np.testing.assert_allclose(net.readout(rs[n]), net.B @ x, rtol=1e-12)  # y_n = B x_n


def test_recurrent_mlp_reads_the_new_lower_layer(getkey):
    net = nd.networks.RecurrentMLP((3, 4, 3, 2), key=getkey())
    us = jr.normal(getkey(), (5, 3))
    rs = _rollout_states(net, us)
    x1, x2 = jnp.zeros(4), jnp.zeros(3)
    for n in range(5):
        x1 = jnp.tanh(net.recurrent[0] @ x1 + net.feedforward[0] @ us[n] + net.biases[0])
        x2 = jnp.tanh(net.recurrent[1] @ x2 + net.feedforward[1] @ x1 + net.biases[1])  # x_I,n+1
        np.testing.assert_allclose(rs[n], jnp.concatenate([x1, x2]), rtol=1e-12)


def test_second_order_network(getkey):
    net = nd.networks.SecondOrder(4, 3, 2, key=getkey())
    us = jr.normal(getkey(), (5, 3))
    rs = _rollout_states(net, us)
    x = jnp.zeros(4)
    for n in range(5):
        v = net.b + np.einsum("kij,i,j->k", np.asarray(net.w), np.asarray(x), np.asarray(us[n]))
        x = 1 / (1 + jnp.exp(-v))
        np.testing.assert_allclose(rs[n], x, rtol=1e-12)


def test_narx_recursion_with_delays(getkey):
    q = 3
    net = nd.networks.NARX(2, 2, q=q, n_hidden=5, key=getkey())
    us = jr.normal(getkey(), (7, 2))
    rs = _rollout_states(net, us)
    ys_hist = [jnp.zeros(2)] * q
    us_hist = [jnp.zeros(2)] * (q - 1)
    for n in range(7):
        inputs = jnp.concatenate(ys_hist + [us[n]] + us_hist)  # y_n..y_{n-q+1}; u_n..u_{n-q+1}
        y_next = net.W_o @ jnp.tanh(net.W_h @ inputs + net.b_h) + net.b_o
        ys_hist = [y_next] + ys_hist[:-1]
        us_hist = [us[n]] + us_hist[:-1]
        np.testing.assert_allclose(net.readout(rs[n]), y_next, rtol=1e-12)


def test_sparse_ctrnn_is_the_masked_dense_network_at_o_nnz_cost(getkey):
    n = 30
    sparse = nd.networks.CTRNN(n, 3, 2, density=0.1, key=getkey())
    W = np.zeros((n, n))
    W[np.asarray(sparse.W_index[0]), np.asarray(sparse.W_index[1])] = np.asarray(sparse.W)
    dense = nd.networks.CTRNN(n, 3, 2, key=getkey())
    import equinox as eqx

    dense = eqx.tree_at(lambda m: (m.W, m.U, m.b, m.V, m.c), dense, (jnp.asarray(W), sparse.U, sparse.b, sparse.V, sparse.c))
    r, x = jr.normal(getkey(), (n,)), jr.normal(getkey(), (3,))
    np.testing.assert_allclose(sparse(0.0, r, x), dense(0.0, r, x), rtol=1e-12, atol=1e-14)
    # O(nnz): no n x n array anywhere in the vector field, its VJP or its JVP.
    params, static = eqx.partition(sparse, eqx.is_inexact_array)

    def F(p, r):
        return eqx.combine(p, static)(0.0, r, x)

    for fn in (F, lambda p, r: jax.vjp(F, p, r)[1](r), lambda p, r: jax.jvp(F, (p, r), (p, r))[1]):
        shapes = [v.aval.shape for eqn in jax.make_jaxpr(fn)(params, r).eqns for v in eqn.outvars]
        assert (n, n) not in shapes


def test_sparse_hopfield_is_symmetric_and_a_gradient_flow(getkey):
    net = nd.networks.Hopfield(3, 12, 2, density=0.3, key=getkey())
    x, r = jr.uniform(getkey(), (3,)), jr.uniform(getkey(), (14,))
    np.testing.assert_allclose(net(0.0, r, x), -jax.grad(net.energy)(r, x), rtol=1e-12, atol=1e-14)
    Ws = net.symmetric_weights
    np.testing.assert_allclose(Ws, Ws.T)
    np.testing.assert_allclose(np.diag(Ws), 0.0)
    assert 0 < np.mean(np.asarray(Ws) != 0) < 0.6
