"""The network families of issue 8.

Each recurrent family of Haykin (2009, ch. 15): its Euler dt = 1 step is its discrete-time
definition, written here from the published recursions, independently of the library code.
The layered and the sparse
Hopfield networks are gradient flows of the energies written here. Sparse connectivity is the
masked dense network, at O(nnz) cost.

The estimator checks are not copied here: `tests/families.py` adds every family to
`helpers.small_networks`, over which the shared suites are parametrised (BPTT, RBP and RTRL
against the dense IFT and fine-trajectory references in tests/test_estimators.py, RTRL = BPTT
in tests/test_rtrl.py); EP, exact only on energy networks, is checked below over every energy
network of that same list.
"""

import contextlib

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import dense_ift_grad, rel_error, small_networks


def _rollout_states(net, xs):
    rs, _ = nd.rollout(net, xs, np.arange(1, xs.shape[0] + 1), output="state", solver=diffrax.Euler(), dt0=1.0)
    return rs


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ---------------------------------------------------------------------------------------
# Haykin (2009, ch. 15): the four recurrent families, Euler dt = 1 against their recursions.
# ---------------------------------------------------------------------------------------


def test_elman_is_the_seed_state_space_model(getkey):
    net = nd.networks.Elman(5, 3, 2, key=getkey())
    net = eqx.tree_at(lambda m: m.b, net, jr.normal(getkey(), (5,)))
    us = jr.normal(getkey(), (6, 3))
    rs = _rollout_states(net, us)
    Wa, Wb, b, B = (np.asarray(a) for a in (net.W_a, net.W_b, net.b, net.B))
    x = np.zeros(5)
    for n in range(6):
        x = _sigmoid(Wa @ x + Wb @ np.asarray(us[n]) + b)  # x_{n+1} = a(x_n, u_n)
        np.testing.assert_allclose(rs[n], x, rtol=1e-12)
        np.testing.assert_allclose(net.readout(rs[n]), B @ x, rtol=1e-12)  # y_n = B x_n


def test_recurrent_mlp_reads_the_new_lower_layer(getkey):
    net = nd.networks.RecurrentMLP((3, 4, 3, 2, 2), key=getkey())
    us = np.asarray(jr.normal(getkey(), (5, 3)))
    rs = _rollout_states(net, jnp.asarray(us))
    W = [np.asarray(a) for a in net.recurrent]
    U = [np.asarray(a) for a in net.feedforward]
    x1, x2, x3 = np.zeros(4), np.zeros(3), np.zeros(2)
    for n in range(5):
        x1 = np.tanh(W[0] @ x1 + U[0] @ us[n])  # x_I,n+1 = phi_I(x_I,n, u_n)
        x2 = np.tanh(W[1] @ x2 + U[1] @ x1)  # x_II,n+1 = phi_II(x_II,n, x_I,n+1)
        x3 = np.tanh(W[2] @ x3 + U[2] @ x2)  # x_O,n+1 = phi_O(x_O,n, x_II,n+1)
        np.testing.assert_allclose(rs[n], np.concatenate([x1, x2, x3]), rtol=1e-12)
        np.testing.assert_allclose(net.readout(rs[n]), np.asarray(net.V) @ x3, rtol=1e-12)


def test_second_order_network(getkey):
    net = nd.networks.SecondOrder(4, 3, 2, key=getkey())
    net = eqx.tree_at(lambda m: m.b, net, jr.normal(getkey(), (4,)))
    us = np.asarray(jr.normal(getkey(), (5, 3)))
    rs = _rollout_states(net, jnp.asarray(us))
    w, b = np.asarray(net.w), np.asarray(net.b)
    x = np.zeros(4)
    for n in range(5):
        # v_k = b_k + sum_i sum_j w_kij x_i u_j;  x_k,n+1 = 1 / (1 + exp(-v_k))
        v = np.array([b[k] + sum(w[k, i, j] * x[i] * us[n, j] for i in range(4) for j in range(3)) for k in range(4)])
        x = _sigmoid(v)
        np.testing.assert_allclose(rs[n], x, rtol=1e-12)


@pytest.mark.parametrize("q", [1, 3])
def test_narx_recursion_with_delays(q, getkey):
    net = nd.networks.NARX(2, 2, q=q, n_hidden=5, key=getkey())
    us = jr.normal(getkey(), (7, 2))
    rs = _rollout_states(net, us)
    Wh, bh, Wo, bo = (np.asarray(a) for a in (net.W_h, net.b_h, net.W_o, net.b_o))
    ys_hist = [np.zeros(2)] * q  # y_n, ..., y_{n-q+1}
    us_hist = [np.zeros(2)] * q  # u_n, ..., u_{n-q+1}
    for n in range(7):
        us_hist = [np.asarray(us[n])] + us_hist[:-1]
        # y_{n+1} = F(y_n, ..., y_{n-q+1}; u_n, ..., u_{n-q+1}), F an MLP
        y_next = Wo @ np.tanh(Wh @ np.concatenate(ys_hist + us_hist) + bh) + bo
        ys_hist = [y_next] + ys_hist[:-1]
        np.testing.assert_allclose(net.readout(rs[n]), y_next, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# The Hopfield network in both forms: gradient flows of their energies.
# ---------------------------------------------------------------------------------------


def test_layered_hopfield_is_the_gradient_flow_of_the_layered_energy(getkey):
    sizes = (3, 4, 5, 2)
    net = nd.networks.LayeredHopfield(sizes, key=getkey())
    net = eqx.tree_at(lambda m: m.biases, net, tuple(jr.normal(getkey(), (s,)) for s in sizes[1:]))
    x, r = jr.uniform(getkey(), (3,)), jr.normal(getkey(), (11,))
    W = [np.asarray(a) for a in net.weights]
    b = [np.asarray(a) for a in net.biases]

    def energy(r):  # 1/2 ||s||^2 - sum_l rho(s_l)^T W_l rho(s_{l-1}) - sum_l b_l^T rho(s_l), rho(s_0) = x
        s = [r[:4], r[4:9], r[9:]]
        rho = [x] + [jax.nn.sigmoid(si) for si in s]
        return 0.5 * r @ r - sum(rho[i + 1] @ W[i] @ rho[i] + b[i] @ rho[i + 1] for i in range(3))

    F = net(0.0, r, x)
    np.testing.assert_allclose(F, -jax.grad(energy)(r), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(net.energy(r, x), energy(r), rtol=1e-12)
    # The explicit form: ds_l/dt = -s_l + rho'(s_l) (W_l rho(s_{l-1}) + W_{l+1}^T rho(s_{l+1}) + b_l).
    s = [np.asarray(r[:4]), np.asarray(r[4:9]), np.asarray(r[9:])]
    rho = [np.asarray(x)] + [_sigmoid(si) for si in s]
    d = [_sigmoid(si) * (1 - _sigmoid(si)) for si in s]
    explicit = [
        -s[0] + d[0] * (W[0] @ rho[0] + W[1].T @ rho[2] + b[0]),
        -s[1] + d[1] * (W[1] @ rho[1] + W[2].T @ rho[3] + b[1]),
        -s[2] + d[2] * (W[2] @ rho[2] + b[2]),
    ]
    np.testing.assert_allclose(F, np.concatenate(explicit), rtol=1e-12, atol=1e-14)
    J = np.asarray(jax.jacfwd(lambda r: net(0.0, r, x))(r))
    np.testing.assert_allclose(J, J.T, atol=1e-13)
    # Adjacent layers only: the first hidden layer and the output do not interact.
    np.testing.assert_array_equal(J[:4, 9:], 0.0)
    np.testing.assert_allclose(net.readout(r), r[9:])


def test_both_hopfield_forms_relax_to_a_stable_equilibrium_by_default(getkey):
    for net in (
        nd.networks.Hopfield(3, 6, 2, key=getkey()),
        nd.networks.LayeredHopfield((3, 6, 2), key=getkey()),
    ):
        x = jr.uniform(getkey(), (3,))
        r, info = nd.relax(net, x, rtol=1e-12, atol=1e-14)
        assert bool(info["converged"])
        J = jax.jacfwd(lambda r: net(0.0, r, x))(r)
        assert float(jnp.max(jnp.linalg.eigvalsh(J))) < 0  # a minimum of the energy


# ---------------------------------------------------------------------------------------
# Sparse connectivity.
# ---------------------------------------------------------------------------------------


def test_sparse_ctrnn_is_the_masked_dense_network(getkey):
    n = 30
    mask = np.asarray(jr.uniform(getkey(), (n, n))) < 0.1
    for form in ("rate", "current"):
        sparse = nd.networks.CTRNN(n, 3, 2, form=form, mask=mask, key=getkey())
        assert sparse.W.shape == (mask.sum(),)
        W = np.zeros((n, n))
        W[np.asarray(sparse.W_index[0]), np.asarray(sparse.W_index[1])] = np.asarray(sparse.W)
        np.testing.assert_array_equal(W != 0, mask)
        np.testing.assert_array_equal(sparse.recurrent_weights, W)
        r, x = np.asarray(jr.normal(getkey(), (n,))), np.asarray(jr.normal(getkey(), (3,)))
        U, b = np.asarray(sparse.U), np.asarray(sparse.b)
        expected = -r + np.tanh(W @ r + U @ x + b) if form == "rate" else -r + W @ np.tanh(r) + U @ x + b
        np.testing.assert_allclose(sparse(0.0, jnp.asarray(r), jnp.asarray(x)), expected, rtol=1e-12, atol=1e-14)


def test_sparse_hopfield_is_symmetric_and_a_gradient_flow(getkey):
    net = nd.networks.Hopfield(3, 12, 2, density=0.3, key=getkey())
    x, r = jr.uniform(getkey(), (3,)), jr.uniform(getkey(), (14,))
    np.testing.assert_allclose(net(0.0, r, x), -jax.grad(net.energy)(r, x), rtol=1e-12, atol=1e-14)
    Ws = np.asarray(net.symmetric_weights)
    np.testing.assert_allclose(Ws, Ws.T)
    np.testing.assert_allclose(np.diag(Ws), 0.0)
    assert 0.1 < np.mean(Ws != 0) < 0.5
    # Written from E = 1/2 ||r||^2 - 1/2 rho^T W_s rho - rho^T (U x + b) with the dense W_s.
    rho = jax.nn.sigmoid(r)
    E = 0.5 * r @ r - 0.5 * rho @ (Ws @ rho) - rho @ (net.U @ x + net.b)
    np.testing.assert_allclose(net.energy(r, x), E, rtol=1e-12)
    J = np.asarray(jax.jacfwd(lambda r: net(0.0, r, x))(r))
    np.testing.assert_allclose(J, J.T, atol=1e-13)


SPARSE = [
    ("ctrnn", lambda key: nd.networks.CTRNN(40, 3, 2, density=0.1, key=key)),
    ("ctrnn-current", lambda key: nd.networks.CTRNN(40, 3, 2, form="current", density=0.1, key=key)),
    ("hopfield", lambda key: nd.networks.Hopfield(3, 38, 2, density=0.1, key=key)),
]


@pytest.mark.parametrize("name,make", SPARSE, ids=[s[0] for s in SPARSE])
def test_sparse_vector_field_vjp_and_jvp_are_o_nnz(name, make, getkey):
    net = make(getkey())
    n = net.n_state
    params, static = eqx.partition(net, eqx.is_inexact_array)
    r, x = jr.normal(getkey(), (n,)), jr.normal(getkey(), (3,))

    def F(p, r):
        return eqx.combine(p, static)(0.0, r, x)

    def vjp(p, r):
        return jax.vjp(F, p, r)[1](r)

    def jvp(p, r):
        return jax.jvp(F, (p, r), (p, r))[1]

    # No intermediate (nor input) anywhere with n^2 entries or more: every array is
    # O(n + nnz) (here nnz ~ 0.1 n^2, the widest arrays, and U, V of n x 3).
    for fn in (F, vjp, jvp):
        jaxpr = jax.make_jaxpr(fn)(params, r)
        sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
        sizes += [int(np.prod(v.aval.shape)) for v in jaxpr.jaxpr.invars]
        assert max(sizes) < 0.5 * n * n, (fn.__name__, max(sizes), n * n)
    # The parameter leaf is the nnz values; the indices are integers, not differentiated.
    assert net.W.ndim == 1 and not eqx.is_inexact_array(net.W_index)


@pytest.mark.slow
def test_sparse_initialisation_keeps_the_dense_spectral_radius():
    # Fixed keys, and the mean over four draws: one draw's spectral radius fluctuates (an
    # outlier eigenvalue of a non-normal matrix), which made a one-key test depend on the
    # order the suite ran in. Over keys 0..11 the dense/sparse ratio is 1.00 +- 0.024.
    n, density = 300, 0.05
    keys = [jr.PRNGKey(i) for i in range(4)]

    def spectral_radius(m):
        return float(np.max(np.abs(np.linalg.eigvals(np.asarray(m.recurrent_weights)))))

    dense = [spectral_radius(nd.networks.CTRNN(n, 2, 1, key=k)) for k in keys]
    sparse = [spectral_radius(nd.networks.CTRNN(n, 2, 1, density=density, key=k)) for k in keys]
    assert abs(np.mean(sparse) / np.mean(dense) - 1) < 0.05, (dense, sparse)
    assert abs(np.mean(dense) - 0.5) < 0.05  # the default gain

    def symmetric_radius(m):
        return float(np.max(np.abs(np.linalg.eigvalsh(np.asarray(m.symmetric_weights)))))

    hop_dense = [symmetric_radius(nd.networks.Hopfield(2, n - 1, 1, key=k)) for k in keys]
    hop_sparse = [symmetric_radius(nd.networks.Hopfield(2, n - 1, 1, density=density, key=k)) for k in keys]
    assert abs(np.mean(hop_sparse) / np.mean(hop_dense) - 1) < 0.1, (hop_dense, hop_sparse)


def test_dense_default_is_unchanged_by_the_sparse_option(getkey):
    # The same key gives the same dense network as before `density` existed.
    key = getkey()
    net = nd.networks.CTRNN(6, 2, 1, key=key)
    kw, ku, kv, _ = jr.split(key, 4)
    np.testing.assert_array_equal(net.W, 0.5 / np.sqrt(6) * jr.normal(kw, (6, 6)))
    np.testing.assert_array_equal(net.U, 1 / np.sqrt(2) * jr.normal(ku, (6, 2)))
    assert net.W_index is None
    hop = nd.networks.Hopfield(2, 5, 1, key=key)
    kw, ku, _ = jr.split(key, 3)
    np.testing.assert_array_equal(hop.W, 0.5 / np.sqrt(6) * jr.normal(kw, (6, 6)))
    assert hop.W_index is None


def test_bad_sparse_options_are_refused(getkey):
    key = getkey()
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        nd.networks.CTRNN(5, 2, 1, density=0.0, key=key)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        nd.networks.Hopfield(2, 4, 1, density=1.5, key=key)
    with pytest.raises(ValueError, match="either `density` or `mask`"):
        nd.networks.CTRNN(5, 2, 1, density=0.5, mask=np.ones((5, 5), bool), key=key)
    with pytest.raises(ValueError, match=r"mask must have shape \(5, 5\)"):
        nd.networks.CTRNN(5, 2, 1, mask=np.ones((4, 4), bool), key=key)
    upper = np.triu(np.ones((5, 5), bool), 1)
    with pytest.raises(ValueError, match="must be symmetric.*mask \\| mask.T"):
        nd.networks.Hopfield(2, 4, 1, mask=upper, key=key)
    with pytest.raises(ValueError, match="zero diagonal"):
        nd.networks.Hopfield(2, 4, 1, mask=np.ones((5, 5), bool), key=key)
    net = nd.networks.Hopfield(2, 4, 1, mask=upper | upper.T, key=key)
    assert net.W.shape == (10,)


# ---------------------------------------------------------------------------------------
# Every family takes every activation, and the bad sizes are refused.
# ---------------------------------------------------------------------------------------

ACTIVATIONS = [
    nd.activations.identity,
    nd.activations.logistic,
    nd.activations.tanh,
    nd.activations.hard_logistic,
    nd.activations.hard_tanh,
    nd.activations.relu,
    nd.activations.leaky_relu,
    nd.activations.elu,
    nd.activations.softplus,
    nd.activations.PReLU(0.2),
    nd.activations.Maxout(2),
]
assert {type(a) for a in ACTIVATIONS} >= {
    c
    for c in vars(nd.activations).values()
    if isinstance(c, type)
    and issubclass(c, nd.activations.AbstractActivation)
    and not c.__name__.startswith("Abstract")
}


def _families(act, key):
    k = jr.split(key, 6)
    # An energy network warns about an activation whose slope jumps off zero (hard_logistic,
    # hard_tanh): tests/test_networks.py checks the warning and why.
    jumps = any(z != 0 for z in getattr(act, "slope_jumps", ()))
    with pytest.warns(UserWarning, match="slope jumps") if jumps else contextlib.nullcontext():
        layered_hopfield = nd.networks.LayeredHopfield((2, 3, 4, 2), act, key=k[4])
    return [
        nd.networks.Elman(4, 2, 2, act, key=k[0]),
        nd.networks.RecurrentMLP((2, 3, 4, 2), act, key=k[1]),
        nd.networks.SecondOrder(4, 2, 2, act, key=k[2]),
        nd.networks.NARX(2, 2, 2, 3, act, key=k[3]),
        layered_hopfield,
        nd.networks.CTRNN(5, 2, 2, act, density=0.5, key=k[5]),
    ]


def _check_activation(act, key):
    x = jnp.array([0.3, -0.7])
    for net in _families(act, key):
        r = jnp.where(jnp.arange(net.n_state) % 2 == 0, 0.6, -0.9)
        out = net(0.0, r, x)
        assert out.shape == (net.n_state,) and bool(jnp.all(jnp.isfinite(out)))
        assert net.readout(r).shape == (net.n_out,)
        if isinstance(net, nd.networks.AbstractEnergyNetwork):  # F = -dE/dr, any activation
            np.testing.assert_allclose(out, -jax.grad(net.energy)(r, x), rtol=1e-12, atol=1e-14)
        if isinstance(act, nd.activations.AbstractParametricActivation):
            # Learnable activations are parameters (inexact leaves) of every family, sized
            # to the units they act on: one per unit and layer.
            def is_act(a, kind=type(act)):
                return isinstance(a, kind)

            acts = [a for a in jax.tree.leaves(net, is_leaf=is_act) if is_act(a)]
            units = sum(jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))[0].shape[0] for a in acts)
            # NARX's activation is its MLP's (3 hidden units); the others act on the state.
            assert units == (3 if isinstance(net, nd.networks.NARX) else net.n_state), type(net).__name__


@pytest.mark.slow
def test_every_family_takes_the_learnable_activations(getkey):
    # The default suite takes the learnable activations (parameters sized per layer); the
    # slow suite all of them (op-by-op evaluation of 66 small networks is compile-bound).
    _check_activation(nd.activations.PReLU(0.2), getkey())
    _check_activation(nd.activations.Maxout(2), getkey())


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTIVATIONS, ids=[type(a).__name__ for a in ACTIVATIONS])
def test_every_family_takes_every_activation(act, getkey):
    _check_activation(act, getkey())


def test_bad_family_sizes_are_refused(getkey):
    key = getkey()
    with pytest.raises(ValueError, match="NARX needs q >= 1"):
        nd.networks.NARX(2, 2, q=0, key=key)
    with pytest.raises(ValueError, match="RecurrentMLP needs sizes"):
        nd.networks.RecurrentMLP((2, 3), key=key)
    with pytest.raises(ValueError, match="LayeredHopfield needs sizes"):
        nd.networks.LayeredHopfield((2,), key=key)
    with pytest.raises(ValueError, match="Elman sizes must be positive"):
        nd.networks.Elman(0, 2, 2, key=key)
    with pytest.raises(ValueError, match="SecondOrder sizes must be positive"):
        nd.networks.SecondOrder(3, 0, 2, key=key)


# ---------------------------------------------------------------------------------------
# EP, exact only where J is symmetric: over every energy network of the shared list.
# ---------------------------------------------------------------------------------------

# (The dense Hopfield network of the list has its own, finer EP suite in tests/test_ep.py.)
ENERGY = [
    (n, net)
    for n, net in small_networks(jr.PRNGKey(1234))
    if isinstance(net, nd.networks.AbstractEnergyNetwork) and n != "hopfield"
]


@pytest.mark.parametrize("name,net", ENERGY, ids=[n for n, _ in ENERGY])
def test_centered_ep_matches_the_dense_reference_on_every_energy_network(name, net, getkey):
    x, y = jr.uniform(getkey(), (net.n_in,)), jr.normal(getkey(), (net.n_out,))
    _, ref, _ = eqx.filter_jit(dense_ift_grad)(net, x, y)
    _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.EP(1e-3, "centered"))
    assert bool(info["converged"])
    assert rel_error(g, ref) < 1e-4, name
