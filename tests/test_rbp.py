"""RBP: seed formulas, the adjoint strategies, stability flags."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import neurodyn as nd
from helpers import (
    assert_tree_close,
    dense_ift_grad,
    directional,
    finite_difference_grad,
    small_networks,
)


STRATEGIES = [
    ("linear", nd.adjoint.Linear()),
    ("gmres", nd.adjoint.Linear(lx.GMRES(rtol=1e-10, atol=1e-12, max_steps=500, restart=40))),
    (
        "bicgstab",
        nd.adjoint.Linear(
            lx.BiCGStab(rtol=1e-10, atol=1e-12, max_steps=500),
            fallback=lx.GMRES(rtol=1e-10, atol=1e-12, max_steps=500, restart=40),
        ),
    ),
    ("jax-gmres", nd.adjoint.JaxGMRES()),
    ("jax-bicgstab", nd.adjoint.JaxBiCGStab()),
    ("adjoint-ode", nd.adjoint.AdjointODE()),
    ("neumann", nd.adjoint.Neumann(K=200, alpha=0.5)),
    ("dense", nd.adjoint.DenseLU()),
]


@pytest.mark.parametrize("name,adj", STRATEGIES, ids=[s[0] for s in STRATEGIES])
@pytest.mark.parametrize("form", ["rate", "current"])
def test_adjoint_strategies_agree_with_the_dense_reference(name, adj, form, getkey):
    net = nd.networks.CTRNN(7, 3, 2, form=form, key=getkey())
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, grads, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(adjoint=adj))
    _, ref, _ = dense_ift_grad(net, x, y)
    assert bool(info["converged"]) and bool(info["adjoint_converged"]) and not bool(info["unstable"])
    assert_tree_close(grads, ref, rtol=1e-7, atol=1e-10, what=name)
    assert float(info["adjoint_residual"]) < 1e-8


def test_rate_form_recurrent_backprop_formula(getkey):
    # Pineda (1987) for x = f(Wx + b): D = diag f'(Wx + b), (D^-1 - W^T) s = dR/dx, dW = s x^T, with R = -l.
    n = 6
    net = nd.networks.CTRNN(n, 3, 2, nd.activations.tanh, "rate", key=getkey())
    net = eqx.tree_at(lambda m: m.b, net, 0.3 * jr.normal(getkey(), (n,)))
    x_in, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, grads, _ = nd.value_and_grad(net, x_in, y, objective=nd.SteadyState(), estimator=nd.RBP())
    x, _ = nd.relax(net, x_in)
    z = net.W @ x + net.U @ x_in + net.b
    D = 1 - jnp.tanh(z) ** 2
    dR_dx = -net.V.T @ (net.V @ x + net.c - y)
    s = jnp.linalg.solve(jnp.diag(1 / D) - net.W.T, dR_dx)
    np.testing.assert_allclose(grads.W, -jnp.outer(s, x), rtol=1e-7, atol=1e-11)
    np.testing.assert_allclose(grads.b, -s, rtol=1e-7, atol=1e-11)


def test_layered_adjoint_is_backprop(getkey):
    # Almeida (1987), Pineda (1987): for the feedforward ODE, v* = -dl/dr* J^-1 is backprop's dl/dx_l, and the
    # Neumann series with K = L terms is exact (I + J is nilpotent of order L).
    net = nd.networks.Layered((3, 5, 4, 2), nd.activations.tanh, key=getkey())
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    r = net.forward(x)

    def mlp_loss_of_layers(r):
        return nd.losses.squared_error(net.readout(r), y)

    # Backprop's error terms: the total derivative of l with respect to each layer's output.
    def total(h1, h2, h3):
        a2 = jnp.tanh(net.weights[1] @ h1 + net.biases[1]) + h2
        a3 = net.weights[2] @ a2 + net.biases[2] + h3
        return nd.losses.squared_error(a3, y)

    h1 = r[:5]
    deltas = jax.grad(total, argnums=(0, 1, 2))(h1, jnp.zeros(4), jnp.zeros(2))
    backprop = jnp.concatenate(deltas)
    g = jax.grad(mlp_loss_of_layers)(r)
    _, vjp = jax.vjp(lambda r: net(0.0, r, x), r)

    def matvec(v):
        return vjp(v)[0]

    for adj in (nd.adjoint.Linear(), nd.adjoint.Neumann(K=3), nd.adjoint.DenseLU()):
        v = adj.solve(matvec, g, lambda: jax.jacfwd(lambda r: net(0.0, r, x))(r), False, 1.0).value
        np.testing.assert_allclose(v, backprop, rtol=1e-9, atol=1e-12)
    v2 = nd.adjoint.Neumann(K=2).solve(matvec, g, None, False, 1.0).value
    assert float(jnp.max(jnp.abs(v2 - backprop))) > 1e-3  # two sweeps do not reach layer 1
    _, grads, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP())
    mlp_grads = eqx.filter_grad(lambda n: nd.losses.squared_error(n.readout(n.forward(x)), y))(net)
    assert_tree_close(grads, mlp_grads, rtol=1e-9, atol=1e-12)


def test_unstable_equilibrium_is_flagged(getkey):
    # With zero input and bias, r = 0 is an equilibrium; at gain 3 it is unstable
    # (J = -I + W has eigenvalues with positive real part) yet the relaxation sits on it.
    net = nd.networks.CTRNN(8, 2, 2, nd.activations.tanh, gain=3.0, key=jr.PRNGKey(0))
    # A symmetric W keeps the spectrum real, so the power-iteration estimate is well defined.
    W = 0.5 * (net.W + net.W.T) + 1.5 * jnp.eye(8)
    net = eqx.tree_at(lambda m: m.W, net, W)
    x, y = jnp.zeros(2), jnp.ones(2)
    _, _, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(stability_check=True))
    assert bool(info["forward_converged"])
    assert float(info["leading_eigenvalue"]) > 0 and bool(info["unstable"]) and not bool(info["converged"])
    assert info["result"] == nd.RESULTS.unstable_equilibrium
    diverging = nd.RBP(adjoint=nd.adjoint.AdjointODE(max_steps=400))
    _, grads, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=diverging)
    assert bool(info["unstable"]) and not bool(info["converged"])
    # The diverged adjoint (its residual reached ~1e81) gives no term: the gradient is the
    # readout's alone, finite, where the last iterate gave the bias a gradient of ~1e81.
    assert float(info["adjoint_residual"]) > 1e10
    r, _ = nd.relax(net, x)
    readout_only = eqx.filter_grad(lambda m: nd.SteadyState().value(m, r, y))(net)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(readout_only)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # In a batch beside stable examples, the batch gradient is still their mean, finite.
    xs, ys = jnp.stack([x, x + 0.3, x - 0.2]), jnp.stack([y, y, -y])
    _, batch, binfo = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=diverging)
    assert bool(binfo["unstable"][0])
    each = [nd.value_and_grad(net, a, b, objective=nd.SteadyState(), estimator=diverging)[1] for a, b in zip(xs, ys)]
    for got, *per in zip(jax.tree.leaves(batch), *map(jax.tree.leaves, each)):
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, sum(per) / 3, rtol=1e-9, atol=1e-12)
    stable = nd.networks.CTRNN(8, 2, 2, nd.activations.tanh, gain=0.5, key=jr.PRNGKey(1))
    _, _, info = nd.value_and_grad(stable, x, y, objective=nd.SteadyState(), estimator=nd.RBP(stability_check=True))
    assert float(info["leading_eigenvalue"]) < 0 and not bool(info["unstable"]) and bool(info["converged"])
    J = jax.jacfwd(lambda r: stable(0.0, r, x))(jnp.zeros(8))
    # A power-iteration estimate of the spectral abscissa: good to a tenth here, and its sign is right.
    assert abs(float(info["leading_eigenvalue"]) - np.max(np.linalg.eigvals(J).real)) < 0.1


def test_rbp_agrees_with_finite_differences(getkey):
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    x, y = jr.uniform(getkey(), (3,)), jr.uniform(getkey(), (2,))
    _, grads, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP())

    def f(n):
        return nd.value_and_grad(n, x, y, objective=nd.SteadyState(), estimator=nd.RBP())[0]

    for d, fd in finite_difference_grad(f, net, eps=1e-6, key=getkey()):
        np.testing.assert_allclose(directional(grads, d), fd, rtol=1e-6, atol=1e-10)


def test_rbp_float32_defaults_converge(getkey):
    net = nd.networks.CTRNN(64, 4, 3, key=getkey())
    net32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net)
    x, y = jr.normal(getkey(), (4,)), jr.normal(getkey(), (3,))
    _, g32, info = nd.value_and_grad(
        net32, x.astype(jnp.float32), y.astype(jnp.float32), objective=nd.SteadyState(), estimator=nd.RBP()
    )
    assert bool(info["converged"]) and g32.W.dtype == jnp.float32
    _, ref, _ = dense_ift_grad(net, x, y)
    assert_tree_close(jax.tree.map(lambda a: a.astype(jnp.float64), g32), ref, rtol=2e-3, atol=1e-5)


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="Neumann needs K >= 1"):
        nd.adjoint.Neumann(K=0)
    with pytest.raises(ValueError, match="must be a lineax solver"):
        nd.adjoint.Linear("gmres")


def test_conjugate_gradients_on_an_energy_network(getkey):
    # Linear() picks CG on AbstractEnergyNetwork (J symmetric): -J^T is positive definite at
    # a stable equilibrium. CG must reach the dense reference in at most n iterations.
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    x, y = jr.uniform(getkey(), (3,)), jr.uniform(getkey(), (2,))
    _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(adjoint=nd.adjoint.Linear()))
    _, ref, _ = dense_ift_grad(net, x, y)
    assert bool(info["adjoint_converged"]) and int(info["adjoint_steps"]) <= net.n_state
    assert_tree_close(g, ref, rtol=1e-7, atol=1e-10, what="cg")


@pytest.mark.slow
@pytest.mark.parametrize("name,net", small_networks(jr.PRNGKey(99)), ids=[n for n, _ in small_networks(jr.PRNGKey(99))])
def test_every_network_every_strategy_against_dense_ift(name, net, getkey):
    x, y = jr.uniform(getkey(), (net.n_in,)), jr.normal(getkey(), (net.n_out,))
    _, ref, _ = dense_ift_grad(net, x, y)
    for sname, adj in STRATEGIES:
        # Neumann's Euler step 0.5 is stable for every family here (|1 + 0.5 lambda| < 1).
        _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(adjoint=adj), dt0=0.5)
        assert bool(info["converged"]), (sname, info["adjoint_residual"])
        assert_tree_close(g, ref, rtol=1e-7, atol=1e-10, what=f"{name}/{sname}")


def test_adjoint_ode_stops_at_once_when_the_loss_gradient_is_zero(getkey):
    # A saturated loss (softmax cross-entropy at probability 1 in float32) gives dl/dr = 0
    # exactly: v = 0 solves the adjoint, and the loop must stop, not run to max_steps (it
    # did: res = tol = 0 failed a strict `<`, which made a 64-point sweep 300x slower).
    net = nd.networks.CTRNN(6, 3, 2, key=getkey())
    r, x = jr.normal(getkey(), (6,)), jr.normal(getkey(), (3,))
    _, vjp = jax.vjp(lambda r: net(0.0, r, x), r)
    adjoint = nd.adjoint.AdjointODE()
    sol = adjoint.solve(lambda u: vjp(u)[0], jnp.zeros(6), None, False, 1.0)
    v = sol.value
    # Its first convergence test: after the free first Euler step (v = dt g) and one test's steps.
    assert int(sol.steps) <= 1 + adjoint.check_every and bool(sol.converged)
    np.testing.assert_array_equal(v, 0.0)


def test_adjoint_ode_tolerance_is_relative_to_the_adjoint_state_too():
    # With |v| >> |g| the test rtol (rms(g) + rms(v)) is met where rtol rms(g) alone is not
    # reachable in float32; the gradient still matches the float64 reference to ~rtol cond(J).
    # Fixed keys: on some draws the float32 forward relaxation itself stalls at gain 0.95,
    # which is not what this test is about (it followed the order of the whole suite).
    k = jr.split(jr.PRNGKey(4), 3)
    net = nd.networks.CTRNN(16, 3, 2, gain=0.95, key=k[0])
    x, y = jr.normal(k[1], (3,)), jr.normal(k[2], (2,))
    _, ref, _ = dense_ift_grad(net, x, y)
    net32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net)
    _, g, info = nd.value_and_grad(
        net32, x.astype(jnp.float32), y.astype(jnp.float32), objective=nd.SteadyState(), estimator=nd.RBP()
    )
    assert bool(info["converged"]) and int(info["adjoint_steps"]) < 1000
    assert_tree_close(jax.tree.map(lambda a: a.astype(jnp.float64), g), ref, rtol=1e-3, atol=1e-5, what="float32 rbp")


def test_adjoint_ode_iterates_are_the_neumann_partial_sums(getkey):
    # Euler on dv/dt = J^T v + g from v = 0 is v_k = dt sum_{i<k} (I + dt J^T)^i g. The loop
    # starts at v_1 = dt g (the first step needs no VJP): after the reported `steps` steps the
    # value must be exactly that partial sum, in float64 (an off-by-one in the step count or
    # the starting point fails).
    n = 7
    J = -jnp.eye(n) + 0.3 * jr.normal(getkey(), (n, n), jnp.float64) / jnp.sqrt(n)
    g = jr.normal(getkey(), (n,), jnp.float64)
    for check_every, max_steps, dt in [(1, 10_000, 1.0), (2, 10_000, 0.5), (3, 7, 1.0)]:
        sol = nd.adjoint.AdjointODE(check_every=check_every, max_steps=max_steps).solve(
            lambda u: J.T @ u, g, None, False, dt
        )
        k = int(sol.steps)
        assert 1 < k <= max_steps
        M = jnp.eye(n) + dt * J.T
        expected = dt * sum(jnp.linalg.matrix_power(M, i) @ g for i in range(k))
        np.testing.assert_allclose(sol.value, expected, rtol=1e-10, atol=1e-12)
        # The reported residual is the one the loop judged: `J^T v + g` at the iterate one
        # step before the last, relative to rms(g), and `converged` is exactly its test.
        before = dt * sum(jnp.linalg.matrix_power(M, i) @ g for i in range(k - 1))
        rms = nd._misc.rms_norm
        # (A difference of iterates: rounding of order eps |v| / dt.)
        np.testing.assert_allclose(sol.residual, rms(J.T @ before + g) / rms(g), rtol=1e-5, atol=1e-14)
        tol = 1e-10 * float(rms(g) + rms(sol.value))  # the float64 default rtol, atol = 0
        assert bool(sol.converged) == (float(sol.residual) * float(rms(g)) <= tol)
        assert bool(sol.converged) == (k < max_steps)
