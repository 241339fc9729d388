"""RTRL: forward sensitivities equal BPTT and reverse mode on the same discretisation, the
fine-step reference, the implicit gradient at a steady state, finite differences; the
approximations are exact where they should be and aligned elsewhere (cosines printed)."""

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
    cosine,
    dense_ift_grad,
    directional,
    EULER1,
    fine_trajectory_grad,
    finite_difference_grad,
    rel_error,
    small_networks,
)
from neurodyn._misc import planned_peak_bytes, tree_cast


NETWORKS = small_networks(jr.PRNGKey(7))
BY_NAME = dict(NETWORKS)
TSIT5 = dict(solver=diffrax.Tsit5(), dt0=0.25)
T = 5
TS = np.arange(1, T + 1)
WEIGHTS = jnp.linspace(0.5, 1.5, T)


def _data(net, key, T=T):
    k1, k2 = jr.split(key)
    return jr.uniform(k1, (T, net.n_in)), jr.normal(k2, (T, net.n_out))


def _rollout_loss(net, xs, ys, **options):
    # Reverse mode through nd.rollout: an independent check of the same discretisation.
    rs, _ = nd.rollout(net, xs, TS, **options)
    return jnp.sum(WEIGHTS * jax.vmap(nd.losses.squared_error)(rs, ys))


def _tsit5_params():
    # Tsit5 over every family is slow (two compilations each); one family by default.
    out = []
    for name, net in NETWORKS:
        marks = () if name == "ctrnn-rate" else (pytest.mark.slow,)
        out.append(pytest.param(name, net, TSIT5, id=f"{name}-tsit5", marks=marks))
    return out


def _euler_params():
    # The four base families by default; the families that join small_networks later
    # (issue 8) run in CI's slow step, keeping the default suite within its time budget.
    return [
        pytest.param(n, net, EULER1, id=f"{n}-euler-dt1", marks=() if i < 4 else (pytest.mark.slow,))
        for i, (n, net) in enumerate(NETWORKS)
    ]


@pytest.mark.parametrize("name,net,solver_opts", _euler_params() + _tsit5_params())
def test_rtrl_equals_bptt_on_the_same_discretisation(name, net, solver_opts):
    xs, ys = _data(net, jr.PRNGKey(1))
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)
    l1, g_rtrl, info = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **solver_opts)
    l2, g_bptt, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(), **solver_opts)
    assert bool(info["converged"]) and int(info["steps"]) == T * (1 if solver_opts is EULER1 else 4)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    assert rel_error(g_rtrl, g_bptt) < 1e-6, name


@pytest.mark.slow  # an independent check of what the BPTT test checks
@pytest.mark.parametrize("name", ["hopfield", "layered"])
def test_rtrl_equals_reverse_mode_through_rollout(name):
    net = BY_NAME[name]
    xs, ys = _data(net, jr.PRNGKey(2))
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)
    loss, g, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **EULER1)
    ref_loss, ref = eqx.filter_value_and_grad(_rollout_loss)(net, xs, ys, **EULER1)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert rel_error(g, ref) < 1e-10


def test_rtrl_with_defaults_is_within_1e_3_of_the_fine_reference(getkey):
    net = nd.networks.CTRNN(6, 3, 2, key=getkey())
    xs, ys = jr.normal(getkey(), (6, 3)), jr.normal(getkey(), (6, 2))
    ts = np.array([0.7, 1.5, 2.0, 3.1, 4.0, 5.5])
    _, g, _ = nd.value_and_grad(net, xs, ys, objective=nd.Trajectory(ts=ts), estimator=nd.RTRL())
    _, ref = fine_trajectory_grad(net, xs, ys, ts)
    err = rel_error(g, ref)
    print(f"RTRL (default Tsit5, dt0 = 0.1) vs fine RK4: relative error {err:.2e}")
    assert err < 1e-3


# Every family is checked against dense_ift_grad in tests/test_estimators.py too.
@pytest.mark.parametrize(
    "name",
    [
        "ctrnn-current",
        pytest.param("hopfield", marks=pytest.mark.slow),
        pytest.param("layered", marks=pytest.mark.slow),
    ],
)
def test_steady_state_rtrl_is_the_implicit_gradient(name, getkey):
    net = BY_NAME[name]
    x, y = jr.normal(getkey(), (net.n_in,)), jr.normal(getkey(), (net.n_out,))
    loss, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RTRL())
    ref_loss, ref, _ = dense_ift_grad(net, x, y)
    assert bool(info["converged"]) and 0 < int(info["steps"]) < 10_000
    assert float(info["residual"]) < 1e-9
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-9)
    assert rel_error(g, ref) < 1e-7


def test_steady_state_non_convergence_is_reported_not_nan(getkey):
    net = BY_NAME["ctrnn-current"]
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RTRL(), max_steps=3)
    assert not bool(info["converged"]) and int(info["steps"]) == 3
    assert info["result"] == nd.RESULTS.max_steps_reached
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_rtrl_agrees_with_finite_differences(getkey):
    net = BY_NAME["ctrnn-rate"]
    xs, ys = _data(net, getkey())
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)
    _, g, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **EULER1)
    for d, fd in finite_difference_grad(lambda m: _rollout_loss(m, xs, ys, **EULER1), net, n_probe=4):
        np.testing.assert_allclose(directional(g, d), fd, rtol=1e-7, atol=1e-9)

    x, y = xs[0], ys[0]
    _, g, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RTRL())

    def steady_loss(m):
        r, _ = nd.relax(m, x)
        return nd.losses.squared_error(m.readout(r), y)

    for d, fd in finite_difference_grad(steady_loss, net, n_probe=4):
        np.testing.assert_allclose(directional(g, d), fd, rtol=1e-5, atol=1e-8)


def _diagonal_ctrnn(key):
    k1, k2 = jr.split(key)
    net = nd.networks.CTRNN(5, 2, 2, key=k1)
    return eqx.tree_at(lambda m: m.W, net, jnp.diag(jr.normal(k2, (5,))) * 0.5)


@pytest.mark.parametrize("approx", [nd.rtrl.SnAp1(), nd.rtrl.Diagonal()], ids=["snap1", "diagonal"])
def test_approximations_are_exact_for_a_diagonal_recurrent_matrix(approx, getkey):
    # With W diagonal, J is diagonal: no sensitivity leaves a unit, nothing is dropped.
    net = _diagonal_ctrnn(getkey())
    xs, ys = jr.normal(getkey(), (4, 2)), jr.normal(getkey(), (4, 2))
    obj = nd.Trajectory(ts=[1.0, 2.0, 3.0, 4.0])
    _, exact, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **EULER1)
    _, approx_g, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(approx), **EULER1)
    # The off-diagonal entries of W have a non-zero gradient, which must be exact too.
    assert float(jnp.max(jnp.abs(exact.W - jnp.diag(jnp.diag(exact.W))))) > 1e-3
    assert_tree_close(approx_g, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["ctrnn-rate", "hopfield"])
def test_approximations_are_biased_but_aligned(name):
    # Reported, as the issue asks. The bound 0.5: the approximations keep the direct
    # readout term and each weight's own-unit path exactly and drop only the paths through
    # other units, which at these contracting gains (spectral radius ~0.5) carry the
    # smaller part of the gradient, so the cosine sits well above 0.5; below it the
    # approximation would be no better than a random half-space.
    net = BY_NAME[name]
    xs, ys = _data(net, jr.PRNGKey(3))
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)
    _, exact, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **EULER1)
    grads = {}
    for approx in (nd.rtrl.SnAp1(), nd.rtrl.Diagonal()):
        _, g, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(approx), **EULER1)
        grads[type(approx).__name__] = g
        c = cosine(g, exact)
        print(f"{name}: cosine of {type(approx).__name__} to exact RTRL = {c:.6f}")
        assert 0.5 < c < 1 - 1e-6
    if name == "hopfield":
        # A symmetric W_ij feeds units i and j: SnAp-1 keeps that 2 x 2 block of J, the
        # diagonal approximation only its diagonal, so the two differ (neither is
        # guaranteed to be the better aligned).
        assert rel_error(grads["SnAp1"], grads["Diagonal"]) > 1e-6


def test_snap1_keeps_the_pattern_of_the_immediate_jacobian(getkey):
    # On a CTRNN every W_ij, U_ij, b_i feeds unit i only: SnAp-1's sensitivities are zero
    # off that unit, and equal the diagonal approximation's (they coincide there).
    net = BY_NAME["ctrnn-rate"]
    xs, ys = _data(net, getkey())
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)
    _, snap, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(nd.rtrl.SnAp1()), **EULER1)
    _, diag, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(nd.rtrl.Diagonal()), **EULER1)
    assert_tree_close(snap, diag, rtol=1e-12, atol=1e-14)


def test_rtrl_jits_vmaps_and_does_not_retrace(getkey):
    net = BY_NAME["ctrnn-rate"]
    xs, ys = jr.uniform(getkey(), (3, T, 3)), jr.normal(getkey(), (3, T, 2))
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def batch(net, xs, ys):
        return jax.vmap(lambda x, y: nd.value_and_grad(net, x, y, objective=obj, estimator=nd.RTRL(), **EULER1))(xs, ys)

    _, grads, info = batch(net, xs, ys)
    batch(net, xs + 1.0, ys)  # a second call with new values must not trace again
    assert info["converged"].shape == (3,) and bool(jnp.all(info["converged"]))
    for i in range(3):
        _, gi, _ = nd.value_and_grad(net, xs[i], ys[i], objective=obj, estimator=nd.RTRL(), **EULER1)
        assert_tree_close(jax.tree.map(lambda a: a[i], grads), gi, rtol=1e-12, atol=1e-14)

    # grad(mean over vmap) through the custom VJP = the mean of the per-example gradients.
    def mean_loss(net):
        ls, _, _ = jax.vmap(lambda x, y: nd.value_and_grad(net, x, y, objective=obj, estimator=nd.RTRL(), **EULER1))(
            xs, ys
        )
        return jnp.mean(ls)

    g_mean = eqx.filter_grad(mean_loss)(net)
    assert_tree_close(g_mean, nd.batch_mean(grads), rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_rtrl_memory_does_not_grow_with_the_trajectory_length(getkey):
    # O(nm) whatever T: the gradient is accumulated as the trajectory runs.
    net = nd.networks.CTRNN(16, 2, 2, key=getkey())

    def planned(T):
        ts = np.arange(1, T + 1)
        fn = eqx.filter_jit(
            lambda net, xs, ys: nd.value_and_grad(
                net, xs, ys, objective=nd.Trajectory(ts=ts), estimator=nd.RTRL(), **EULER1
            )[:2]
        )
        return planned_peak_bytes(fn, net, jnp.zeros((T, 2)), jnp.zeros((T, 2)))

    short, long = planned(4), planned(64)
    if short is None:
        pytest.skip("this backend reports no memory analysis")
    m = sum(a.size for a in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
    # Storing p at every time would add (64 - 4) x n x m x 8 bytes (about 2.7 MB).
    assert long - short < 16 * m * 8, (short, long)


def test_rtrl_in_float32(getkey):
    net = BY_NAME["ctrnn-rate"]
    xs, ys = _data(net, getkey())
    obj = nd.Trajectory(ts=TS, weights=WEIGHTS)
    net32 = tree_cast(net, jnp.float32)
    _, g32, info = nd.value_and_grad(net32, xs, ys, objective=obj, estimator=nd.RTRL(), **EULER1)
    _, g64, _ = nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **EULER1)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g32)) and bool(info["converged"])
    assert rel_error(jax.tree.map(lambda a: a.astype(jnp.float64), g32), g64) < 1e-5


def test_bad_sensitivity_is_refused():
    with pytest.raises(ValueError, match="RTRL's sensitivity must be nd.rtrl.Exact"):
        nd.RTRL("snap1")
