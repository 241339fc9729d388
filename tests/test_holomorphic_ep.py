"""Holomorphic EP (Laborieux & Zenke 2022): N complex nudged phases on a circle of radius
beta; the first Fourier coefficient is the gradient with an O(beta^N) bias, so it is exact
at a finite beta as N grows. Checked against the dense implicit-function reference."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import assert_tree_close, dense_ift_grad, rel_error


SS = nd.SteadyState()
NET = nd.networks.Hopfield(3, 5, 2, key=jr.PRNGKey(2))
X, Y = jr.normal(jr.PRNGKey(3), (3,)), jr.normal(jr.PRNGKey(4), (2,))
_REF = []


def _ref():
    if not _REF:
        _REF.append(eqx.filter_jit(dense_ift_grad)(NET, X, Y)[1])
    return _REF[0]


def _err(beta, points, net=NET):
    est = nd.EP(beta, "holomorphic", points=points)
    _, g, info = nd.value_and_grad(net, X, Y, objective=SS, estimator=est)
    assert bool(info["converged"]) and bool(info["nudged_converged"])
    return rel_error(g, _ref()), g


def test_error_falls_geometrically_with_the_number_of_points():
    # Observed at beta = 0.2 (float64): N = 2: 3.3e-2, 3: 5.1e-3, 4: 6.3e-4, 6: 1.2e-5,
    # 8: 1.7e-6 (the bias is a_{N+1} beta^N). Asserted: each step in N gains > 4x, and
    # N = 6 is within 1e-4 (8x margin).
    errs = {N: _err(0.2, N)[0] for N in (2, 4, 6)}
    print("holomorphic EP, beta = 0.2, relative error vs N:", {k: f"{v:.1e}" for k, v in errs.items()})
    assert errs[4] < errs[2] / 4 and errs[6] < errs[4] / 4
    assert errs[6] < 1e-4


def test_accurate_at_a_large_beta():
    # Observed at beta = 0.5: centered (N = 2) 2.2e-1, N = 4: 2.2e-2, N = 6: 3.1e-3.
    err_c = rel_error(nd.value_and_grad(NET, X, Y, objective=SS, estimator=nd.EP(0.5, "centered"))[1], _ref())
    err4, _ = _err(0.5, 4)
    err6, _ = _err(0.5, 6)
    print(f"beta = 0.5: centered {err_c:.1e}, holomorphic N=4 {err4:.1e}, N=6 {err6:.1e}")
    assert err_c > 0.1
    assert err4 < 0.05 and err6 < 1e-2


def test_two_points_is_centered_ep():
    _, g_h = _err(0.05, 2)
    _, g_c, _ = nd.value_and_grad(NET, X, Y, objective=SS, estimator=nd.EP(0.05, "centered"))
    assert_tree_close(g_h, g_c, rtol=1e-9, atol=1e-12)


def test_batch_path_is_the_mean_of_the_examples(getkey):
    xs, ys = jr.normal(getkey(), (3, 3)), jr.normal(getkey(), (3, 2))
    est = nd.EP(0.3, "holomorphic", points=4)
    loss, g, info = nd.batch_value_and_grad(NET, xs, ys, objective=SS, estimator=est)
    per = [nd.value_and_grad(NET, xs[i], ys[i], objective=SS, estimator=est) for i in range(3)]
    np.testing.assert_allclose(loss, np.mean([p[0] for p in per]), rtol=1e-12)
    mean = jax.tree.map(lambda *a: sum(a) / 3, *[p[1] for p in per])
    assert_tree_close(g, mean, rtol=1e-10, atol=1e-13)
    assert info["converged"].shape == (3,) and bool(jnp.all(info["converged"]))


def test_a_network_without_energy_takes_the_seed_formula(getkey):
    # A tanh CTRNN runs on complex states; its Jacobian is not symmetric, so (as for every
    # EP variant) the estimate is biased but finite and reported converged.
    net = nd.networks.CTRNN(4, 3, 2, nd.activations.tanh, "rate", key=getkey())
    _, g, info = nd.value_and_grad(net, X, Y, objective=SS, estimator=nd.EP(0.2, "holomorphic", points=3))
    assert bool(info["converged"]) and float(info["asymmetry"]) > 0
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


@pytest.mark.parametrize("points", [1, 0, 2.0, True, jnp.asarray(4)])
def test_bad_points_are_refused(points):
    with pytest.raises(ValueError, match="needs points = a Python int >= 2"):
        nd.EP(0.1, "holomorphic", points=points)
    assert nd.EP(0.1, "holomorphic").points == 4  # the default


def test_points_with_another_variant_is_refused():
    with pytest.raises(ValueError, match="applies to variant='holomorphic' only"):
        nd.EP(0.1, "centered", points=4)


def test_non_holomorphic_activation_is_refused(getkey):
    net = nd.networks.Hopfield(3, 5, 2, nd.activations.relu, key=getkey())
    with pytest.raises(ValueError, match="needs a holomorphic activation.*ReLU"):
        nd.value_and_grad(net, X, Y, objective=SS, estimator=nd.EP(0.1, "holomorphic"))


def test_a_traced_beta_sweep_compiles_once():
    # beta is an array field: a vmapped sweep over it is one compilation. Observed relative
    # errors at N = 4: 3.9e-5 (beta = 0.1), 3.2e-3 (beta = 0.3).
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def sweep(betas):
        est = lambda b: nd.EP(b, "holomorphic", points=4)  # noqa: E731
        return jax.vmap(lambda b: nd.value_and_grad(NET, X, Y, objective=SS, estimator=est(b))[1])(betas)

    gs = sweep(jnp.array([0.1, 0.3]))
    sweep(jnp.array([0.2, 0.4]))
    errs = [rel_error(jax.tree.map(lambda a: a[i], gs), _ref()) for i in range(2)]
    assert errs[0] < 4e-4 and errs[1] < 3e-2
