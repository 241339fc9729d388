"""Equilibrium propagation: exact on energy networks as beta -> 0 with the bias orders of the
seed notes and Laborieux et al. (slope 1 one-sided, 2 centered), the finite difference of
nudged states against a dense solve, and honest (reported, visible) bias on non-symmetric
networks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import (
    assert_tree_close,
    cosine,
    dense_ift_grad,
    directional,
    finite_difference_grad,
    rel_error,
)
from neurodyn._dynamics import relax_loop
from neurodyn._options import steady_state_options


SS = nd.SteadyState()
# The dense reference, compiled: four times faster than its op-by-op run.
_reference = eqx.filter_jit(dense_ift_grad)


def _vg(net, x, y, est, **options):
    return nd.value_and_grad(net, x, y, objective=SS, estimator=est, **options)


class NotEnergy(nd.networks.AbstractNetwork):
    """Test-only: a network's vector field without its energy, so EP takes its generic
    (seed-formula) path on a symmetric Jacobian."""

    net: nd.networks.AbstractNetwork

    @property
    def n_state(self):
        return self.net.n_state

    @property
    def n_in(self):
        return self.net.n_in

    @property
    def n_out(self):
        return self.net.n_out

    def __call__(self, t, r, x):
        return self.net(t, r, x)

    def init_state(self, x):
        return self.net.init_state(x)

    def readout(self, r):
        return self.net.readout(r)


@pytest.fixture(scope="module")
def hop():
    k = jr.split(jr.PRNGKey(40), 3)
    net = nd.networks.Hopfield(4, 8, 3, key=k[0])
    x, y = jr.uniform(k[1], (4,)), jr.uniform(k[2], (3,))
    _, ref, _ = _reference(net, x, y)
    return net, x, y, ref


@pytest.fixture(scope="module")
def ctrnn():
    k = jr.split(jr.PRNGKey(41), 3)
    net = nd.networks.CTRNN(8, 3, 2, key=k[0])
    x, y = jr.normal(k[1], (3,)), jr.normal(k[2], (2,))
    _, ref, _ = _reference(net, x, y)
    return net, x, y, ref


def test_centered_ep_at_beta_5e_3_is_exact_to_1e_3_with_default_options(hop):
    net, x, y, ref = hop
    loss, g, info = _vg(net, x, y, nd.EP(5e-3, "centered"))
    assert rel_error(g, ref) < 1e-3 and cosine(g, ref) > 1 - 1e-6
    # RBP (matrix-free adjoint) agrees with the reference; EP sits within its O(beta^2) bias.
    loss_rbp, g_rbp, _ = _vg(net, x, y, nd.RBP())
    assert rel_error(g, g_rbp) < 1e-3
    np.testing.assert_allclose(loss, loss_rbp, rtol=1e-9)
    assert bool(info["converged"]) and bool(info["forward_converged"]) and bool(info["nudged_converged"])
    assert int(info["nudged_steps"]) > 0 and int(info["steps"]) > 0
    assert info["result"] == nd.RESULTS.successful
    # Not measured by default on an energy network; measured with one probe, not assumed:
    # J = -d^2E/dr^2 is symmetric.
    assert "asymmetry" not in info
    _, g1, info1 = _vg(net, x, y, nd.EP(5e-3, "centered", asymmetry_probes=1))
    assert 0.0 <= float(info1["asymmetry"]) < 1e-12
    assert rel_error(g1, g) < 1e-12


def test_centered_ep_against_finite_differences(hop):
    net, x, y, _ = hop
    _, g, _ = _vg(net, x, y, nd.EP(5e-3, "centered"))

    def loss_at_steady_state(m):
        r, _ = nd.relax(m, x, rtol=1e-13, atol=1e-15)
        return nd.losses.squared_error(m.readout(r), y)

    for d, fd in finite_difference_grad(loss_at_steady_state, net, eps=1e-6, n_probe=3):
        np.testing.assert_allclose(directional(g, d), fd, rtol=2e-3, atol=1e-8)


def _sweep(net, x, y, variant, betas):
    def grads(beta):
        _, g, info = _vg(net, x, y, nd.EP(beta, variant))
        return g, info["converged"]

    gs, ok = jax.vmap(grads)(jnp.asarray(betas))
    assert bool(jnp.all(ok))
    return [jax.tree.map(lambda a, i=i: a[i], gs) for i in range(len(betas))]


def test_bias_orders_one_sided_and_centered(hop):
    net, x, y, ref = hop
    betas = np.array([0.04, 0.02, 0.01, 0.005])
    e1 = np.array([rel_error(g, ref) for g in _sweep(net, x, y, "one-sided", betas)])
    e2 = np.array([rel_error(g, ref) for g in _sweep(net, x, y, "centered", betas)])
    s1 = np.polyfit(np.log(betas), np.log(e1), 1)[0]
    s2 = np.polyfit(np.log(betas), np.log(e2), 1)[0]
    assert 0.8 < s1 < 1.2, f"one-sided slope {s1}, errors {e1}"
    assert 1.7 < s2 < 2.3, f"centered slope {s2}, errors {e2}"
    assert np.all(e2 < e1) and np.all(np.diff(e1) < 0) and np.all(np.diff(e2) < 0)


def test_nudged_finite_difference_tends_to_minus_J_inverse_dl_dr(hop, ctrnn):
    # DESIGN.md's convention: dr/dt = F + b (dl/dr)^T, so dr*/db = -J^-1 (dl/dr)^T. That is
    # RBP's adjoint v*^T = -J^-T (dl/dr)^T only when J is symmetric: the source of EP's bias.
    opts = steady_state_options(jnp.float64, rtol=1e-13, atol=1e-15)
    for (net, x, y, _), symmetric in ((hop, True), (ctrnn, False)):
        r0, _ = relax_loop(net, x, net.init_state(x), opts)

        def dl_dr(r):
            return jax.grad(lambda r: nd.losses.squared_error(net.readout(r), y))(r)

        J = jax.jacfwd(lambda r: net(0.0, r, x))(r0)
        limit = -jnp.linalg.solve(J, dl_dr(r0))
        adjoint = -jnp.linalg.solve(J.T, dl_dr(r0))
        errs = []
        for b in (1e-2, 5e-3, 2.5e-3):
            rb, info = relax_loop(net, x, r0, opts, forcing=lambda r, b=b: b * dl_dr(r))
            assert bool(info["converged"])
            errs.append(float(jnp.linalg.norm((rb - r0) / b - limit) / jnp.linalg.norm(limit)))
        # O(b): halving b halves the error.
        assert 0.4 < errs[1] / errs[0] < 0.6 and 0.4 < errs[2] / errs[1] < 0.6, errs
        assert errs[-1] < 1e-2
        gap = float(jnp.linalg.norm(adjoint - limit) / jnp.linalg.norm(limit))
        assert (gap < 1e-10) if symmetric else (gap > 0.1)


def test_generic_formula_on_a_symmetric_non_energy_network(hop):
    # The centered EP formula (Scellier & Bengio 2017; Laborieux et al. 2021),
    # -((r^b - r^-b)/2b)^T dF/dw, with its sign, on the same vector field seen without its
    # energy: exact as beta -> 0 because J is symmetric.
    net, x, y, ref = hop
    _, g, info = _vg(NotEnergy(net), x, y, nd.EP(5e-3, "centered"))
    assert rel_error(g.net, ref) < 1e-3
    assert float(info["asymmetry"]) < 1e-12  # four probes on a general network
    _, g1, _ = _vg(NotEnergy(net), x, y, nd.EP(5e-3, "one-sided"))
    assert 1e-4 < rel_error(g1.net, ref) < 2e-2


def test_non_symmetric_ctrnn_reports_asymmetry_and_bias(hop, ctrnn):
    net, x, y, ref = ctrnn
    _, g, info = _vg(net, x, y, nd.EP(1e-3, "centered"))
    r, _ = nd.relax(net, x)
    J = jax.jacfwd(lambda r: net(0.0, r, x))(r)
    exact = float(jnp.linalg.norm(J - J.T) / jnp.linalg.norm(J))
    assert bool(info["converged"])
    assert float(info["asymmetry"]) > 0.1
    assert abs(float(info["asymmetry"]) - exact) < 0.5 * exact  # a four-probe estimate
    # The bias: far larger than EP's error at the same beta on the symmetric Hopfield net.
    hnet, hx, hy, href = hop
    _, hg, _ = _vg(hnet, hx, hy, nd.EP(1e-3, "centered"))
    assert rel_error(g, ref) > 0.05
    assert rel_error(g, ref) > 1e3 * rel_error(hg, href)
    # The readout's parameters (V, c) take their direct gradient at r*: exact.
    assert_tree_close((g.V, g.c), (ref.V, ref.c), rtol=1e-8, atol=1e-12, what="readout")
    assert "asymmetry" not in _vg(net, x, y, nd.EP(1e-3, asymmetry_probes=0))[2]


def test_beta_sweep_compiles_once_and_batches(hop):
    net, x, y, ref = hop

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def at(est):
        return _vg(net, x, y, est)[1]

    g1 = at(nd.EP(jnp.asarray(0.01)))
    at(nd.EP(jnp.asarray(0.03)))  # another beta: no new trace
    assert rel_error(g1, ref) < 1e-3

    xs = jnp.stack([x, 0.5 * x, x[::-1]])
    ys = jnp.stack([y, y[::-1], 0.5 * y])
    est = nd.EP(0.01)
    losses, gs, infos = jax.vmap(lambda a, b: _vg(net, a, b, est))(xs, ys)
    assert infos["converged"].shape == (3,) and bool(jnp.all(infos["converged"]))
    for i in range(3):
        _, gi, _ = _vg(net, xs[i], ys[i], est)
        assert_tree_close(jax.tree.map(lambda a: a[i], gs), gi, rtol=1e-10, atol=1e-14, what=f"example {i}")

    # jax.grad of the batch-mean loss is the mean of EP's per-example gradients.
    def mean_loss(m):
        return jnp.mean(jax.vmap(lambda a, b: _vg(m, a, b, est)[0])(xs, ys))

    g_mean = eqx.filter_grad(mean_loss)(net)
    assert_tree_close(
        eqx.filter(g_mean, eqx.is_inexact_array), nd.batch_mean(gs), rtol=1e-10, atol=1e-14, what="grad(mean)"
    )


def test_non_convergence_is_data(hop):
    net, x, y, _ = hop
    _, g, info = _vg(net, x, y, nd.EP(0.01), max_steps=2)
    assert not bool(info["converged"]) and not bool(info["forward_converged"])
    assert info["result"] == nd.RESULTS.max_steps_reached
    # Free phase fine, nudged phases unstable: Euler with dt = 1 on output units decaying at
    # rate 1 + beta (or 1 - beta) amplifies them tenfold per step when beta = 10.
    for variant in ("centered", "one-sided"):
        _, g, info = _vg(net, x, y, nd.EP(10.0, variant))
        assert bool(info["forward_converged"]) and not bool(info["nudged_converged"])
        assert not bool(info["converged"])
        assert info["result"] == nd.RESULTS.nonfinite


def test_bad_arguments_and_objectives(hop):
    with pytest.raises(ValueError, match=r"EP needs beta > 0, got beta=0.0"):
        nd.EP(beta=0.0)
    with pytest.raises(ValueError, match="EP needs beta > 0"):
        nd.EP(beta=jnp.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="EP needs beta > 0"):
        nd.EP(beta=float("nan"))
    with pytest.raises(ValueError, match="EP variant must be 'centered' or 'one-sided', got 'symmetric'"):
        nd.EP(variant="symmetric")
    with pytest.raises(ValueError, match="EP asymmetry_probes must be None or an integer >= 0"):
        nd.EP(asymmetry_probes=-1)
    net = hop[0]
    msg = (
        r"EP cannot serve a Trajectory objective: it needs a steady state, and serves only "
        r"nd.SteadyState. Use nd.BPTT\(\) or nd.RTRL\(\) for trajectory objectives."
    )
    with pytest.raises(ValueError, match=msg):
        nd.value_and_grad(
            net, jnp.ones((2, 4)), jnp.zeros((2, 3)), objective=nd.Trajectory(ts=[1.0, 2.0]), estimator=nd.EP()
        )
