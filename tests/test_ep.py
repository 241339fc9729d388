"""Equilibrium propagation: exact on energy networks as beta -> 0, with the bias orders of
the seed notes and Laborieux et al., honest on non-symmetric networks."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import dense_ift_grad, rel_error
from neurodyn._dynamics import relax_loop
from neurodyn._options import steady_state_options


@pytest.fixture
def hopfield_problem(getkey):
    net = nd.networks.Hopfield(4, 8, 3, key=getkey())
    x, y = jr.uniform(getkey(), (4,)), jr.uniform(getkey(), (3,))
    _, ref, _ = dense_ift_grad(net, x, y)
    return net, x, y, ref


def _errors(net, x, y, ref, variant, betas):
    out = []
    for b in betas:
        _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.EP(b, variant))
        assert bool(info["converged"])
        out.append(rel_error(g, ref))
    return np.array(out)


def test_bias_orders_one_sided_and_centered(hopfield_problem):
    net, x, y, ref = hopfield_problem
    betas = np.array([0.04, 0.02, 0.01])
    e1 = _errors(net, x, y, ref, "one-sided", betas)
    e2 = _errors(net, x, y, ref, "centered", betas)
    s1 = np.polyfit(np.log(betas), np.log(e1), 1)[0]
    s2 = np.polyfit(np.log(betas), np.log(e2), 1)[0]
    assert 0.8 < s1 < 1.2, f"one-sided slope {s1}"
    assert 1.7 < s2 < 2.3, f"centered slope {s2}"
    assert np.all(e2 < e1)


def test_centered_ep_at_small_beta_is_exact_to_1e_3(hopfield_problem):
    net, x, y, ref = hopfield_problem
    _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.EP(5e-3, "centered"))
    assert rel_error(g, ref) < 1e-3
    assert float(info["asymmetry"]) == 0.0
    _, g_rbp, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP())
    assert rel_error(g, g_rbp) < 1e-3


def test_nudged_finite_difference_is_minus_J_inverse_transpose_dl_dr(hopfield_problem):
    net, x, y, _ = hopfield_problem
    opts = steady_state_options(jnp.float64)
    r0, _ = relax_loop(net, x, net.init_state(x), opts)
    g = jax.grad(lambda r: nd.losses.squared_error(net.readout(r), y))(r0)
    J = jax.jacfwd(lambda r: net(0.0, r, x))(r0)
    target = -jnp.linalg.solve(J.T, g)  # = -J^-1 g as J is symmetric here
    errs = []
    for b in (1e-2, 1e-3):
        rb, _ = relax_loop(net, x, r0, opts, forcing=lambda r: b * jax.grad(lambda r: nd.losses.squared_error(net.readout(r), y))(r))
        errs.append(float(jnp.linalg.norm((rb - r0) / b - target) / jnp.linalg.norm(target)))
    assert errs[1] < errs[0] and errs[1] < 1e-2


def test_non_symmetric_network_reports_asymmetry_and_bias(getkey):
    net = nd.networks.CTRNN(8, 3, 2, key=getkey())
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, ref, _ = dense_ift_grad(net, x, y)
    _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.EP(1e-3, "centered"))
    J = jax.jacfwd(lambda r: net(0.0, r, x))(nd.relax(net, x)[0])
    exact_asym = float(jnp.linalg.norm(J - J.T) / jnp.linalg.norm(J))
    assert float(info["asymmetry"]) > 0.1
    assert abs(float(info["asymmetry"]) - exact_asym) < 0.5 * exact_asym  # a 4-probe estimate
    assert rel_error(g, ref) > 0.05  # the bias EP cannot remove on a non-symmetric J


def test_ep_vmaps_and_sweeps_beta_with_one_compile(hopfield_problem):
    import equinox as eqx

    net, x, y, ref = hopfield_problem

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def at(beta):
        return nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.EP(beta))[1]

    g1 = at(jnp.asarray(0.01))
    at(jnp.asarray(0.03))  # a new beta: no new trace
    assert rel_error(g1, ref) < 1e-3

    def plain(beta):
        return nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.EP(beta))[1]

    grads = jax.vmap(plain)(jnp.array([0.02, 0.01]))
    assert rel_error(jax.tree.map(lambda a: a[1], grads), g1) < 1e-10


def test_bad_arguments_and_objectives(getkey):
    with pytest.raises(ValueError, match="EP needs beta > 0"):
        nd.EP(beta=0.0)
    with pytest.raises(ValueError, match="EP variant must be"):
        nd.EP(variant="symmetric")
    net = nd.networks.Hopfield(2, 3, 1, key=getkey())
    with pytest.raises(ValueError, match="EP cannot serve a Trajectory objective"):
        nd.value_and_grad(net, jnp.ones((2, 2)), jnp.zeros((2, 1)), objective=nd.Trajectory(ts=[1.0, 2.0]), estimator=nd.EP())
