"""RTRL approximations with their real memory: SnAp-1 in its sparse layout (Menick et al.
2021; one sensitivity per parameter, O(m) memory) and UORO (Tallec & Ollivier 2018; an
unbiased rank-one estimate, O(n + m) memory)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import neurodyn as nd
from helpers import assert_tree_close, EULER1, rel_error
from neurodyn._misc import planned_peak_bytes


T = 5
TS = np.arange(1, T + 1)
OBJ = nd.Trajectory(ts=TS, weights=jnp.linspace(0.5, 1.5, T))
NET = nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, "rate", key=jr.PRNGKey(7))
XS, YS = jr.uniform(jr.PRNGKey(1), (T, 3)), jr.normal(jr.PRNGKey(2), (T, 2))


def _grad(net, sens, obj=OBJ, xs=XS, ys=YS, **options):
    options = options or EULER1
    return nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(sens), **options)


# ---------------------------------------------------------------------------------------
# SnAp-1, sparse layout
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["rate", "current"])
def test_sparse_snap1_equals_the_dense_masked_layout(form):
    net = nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, form, key=jr.PRNGKey(3))
    _, dense, _ = _grad(net, nd.rtrl.SnAp1())
    loss, sparse, info = _grad(net, nd.rtrl.SparseSnAp1())
    assert bool(info["converged"])
    assert_tree_close(sparse, dense, rtol=1e-12, atol=1e-14)
    # An approximation: not the exact gradient (W is not diagonal).
    _, exact, _ = _grad(net, nd.rtrl.Exact())
    assert rel_error(sparse, exact) > 1e-6


@pytest.mark.slow
def test_sparse_snap1_with_tsit5():
    tsit5 = dict(solver=diffrax.Tsit5(), dt0=0.5)
    _, dense, _ = _grad(NET, nd.rtrl.SnAp1(), **tsit5)
    _, sparse, _ = _grad(NET, nd.rtrl.SparseSnAp1(), **tsit5)
    assert_tree_close(sparse, dense, rtol=1e-12, atol=1e-14)


def test_sparse_snap1_at_a_steady_state():
    ss = nd.SteadyState()
    _, dense, _ = _grad(NET, nd.rtrl.SnAp1(), ss, XS[0], YS[0], dt0=1.0)
    _, sparse, info = _grad(NET, nd.rtrl.SparseSnAp1(), ss, XS[0], YS[0], dt0=1.0)
    assert bool(info["converged"])
    assert_tree_close(sparse, dense, rtol=1e-8, atol=1e-12)


def _slope(sens, sizes=(8, 16, 32)):
    ms, peaks = [], []
    for n in sizes:
        net = nd.networks.CTRNN(n, 2, 2, key=jr.PRNGKey(0))
        fn = eqx.filter_jit(
            lambda net, xs, ys: nd.value_and_grad(
                net, xs, ys, objective=nd.Trajectory(ts=[1.0, 2.0, 3.0]), estimator=nd.RTRL(sens), **EULER1
            )[:2]
        )
        peaks.append(planned_peak_bytes(fn, net, jnp.zeros((3, 2)), jnp.zeros((3, 2))))
        ms.append(sum(a.size for a in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))))
    if None in peaks:
        pytest.skip("this backend reports no memory analysis")
    return float(np.polyfit(np.log(np.asarray(ms, float)), np.log(np.asarray(peaks, float)), 1)[0]), ms, peaks


@pytest.mark.slow
def test_sparse_snap1_memory_is_linear_in_the_parameters():
    # Observed (CPU, float64, n = 8, 16, m = 106, 338): sparse 4.4, 13.4 kB (log-log slope
    # 0.95); dense (p is n x m ~ m^1.5) 20.7, 129 kB (slope 1.58). Three sizes, and UORO,
    # in the slow test below.
    sparse, ms, sparse_peaks = _slope(nd.rtrl.SparseSnAp1(), sizes=(8, 16))
    dense, _, dense_peaks = _slope(nd.rtrl.SnAp1(), sizes=(8, 16))
    print(
        f"planned peak bytes vs m = {ms}: SparseSnAp1 {sparse_peaks} (log-log slope {sparse:.2f}), "
        f"SnAp1 dense {dense_peaks} (slope {dense:.2f})"
    )
    assert sparse < 1.3 and dense > 1.4


@pytest.mark.slow
def test_memory_slopes_over_three_sizes():
    # Observed (CPU, float64, n = 8, 16, 32, m = 106, 338, 1186): sparse 4.4, 13.4, 46.7 kB,
    # slope 0.97; dense 20.7, 129, 918 kB, slope 1.57; UORO 5.0, 10.9, 32.0 kB, slope 0.77.
    sparse, ms, sparse_peaks = _slope(nd.rtrl.SparseSnAp1())
    dense, _, dense_peaks = _slope(nd.rtrl.SnAp1())
    uoro, _, uoro_peaks = _slope(nd.rtrl.UORO(0))
    print(
        f"planned peak bytes vs m = {ms}: SparseSnAp1 {sparse_peaks} (log-log slope {sparse:.2f}), "
        f"SnAp1 dense {dense_peaks} (slope {dense:.2f}), UORO {uoro_peaks} (slope {uoro:.2f})"
    )
    assert sparse < 1.3 and uoro < 1.3
    assert dense > 1.4


def test_sparse_snap1_refuses_a_parameter_feeding_several_units(getkey):
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    x, y = jr.normal(getkey(), (T, 3)), jr.normal(getkey(), (T, 2))
    with pytest.raises(ValueError, match=r"parameters of \.W feed several units.*Use nd\.rtrl\.SnAp1\(\)"):
        _grad(net, nd.rtrl.SparseSnAp1(), xs=x, ys=y)


def test_sparse_snap1_online_equals_the_dense_layout():
    kw = dict(optimizer=optax.sgd(0.05), update_every=2)
    dense, l1 = nd.online.fit_online(NET, XS, YS, sensitivity=nd.rtrl.SnAp1(), **kw)
    sparse, l2 = nd.online.fit_online(NET, XS, YS, sensitivity=nd.rtrl.SparseSnAp1(), **kw)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    assert_tree_close(
        eqx.filter(sparse, eqx.is_inexact_array), eqx.filter(dense, eqx.is_inexact_array), rtol=1e-12, atol=1e-14
    )


# ---------------------------------------------------------------------------------------
# UORO
# ---------------------------------------------------------------------------------------


def test_uoro_is_unbiased():
    # The mean over K independent draws (keys) falls towards exact RTRL as 1/sqrt(K).
    # Observed (this CTRNN, T = 5, Euler dt = 1): one draw 1.98 (RMS), the RMS of 16
    # disjoint means of 64 draws 0.255, the mean of all 1024 draws 0.073 (ratio 3.5;
    # sqrt(16) = 4 expected, the 1024-draw error being one noisy sample). Asserted:
    # ratio > 2 and the 1024-draw error < 0.15.
    _, exact, _ = _grad(NET, nd.rtrl.Exact())
    draw = eqx.filter_jit(jax.vmap(lambda k: _grad(NET, nd.rtrl.UORO(k))[1]))
    grads = draw(jr.split(jr.PRNGKey(5), 1024))
    groups = [rel_error(jax.tree.map(lambda a: a[i * 64 : (i + 1) * 64].mean(0), grads), exact) for i in range(16)]
    err64 = float(np.sqrt(np.mean(np.square(groups))))
    err1024 = rel_error(jax.tree.map(lambda a: a.mean(0), grads), exact)
    one = float(np.sqrt(np.mean([rel_error(jax.tree.map(lambda a: a[i], grads), exact) ** 2 for i in range(64)])))
    print(f"UORO relative error: one draw {one:.2f}, mean of 64 draws {err64:.3f}, of 1024 {err1024:.3f}")
    assert err64 / err1024 > 2
    assert err1024 < 0.15


def test_uoro_is_reproducible_and_keyed():
    _, g1, info = _grad(NET, nd.rtrl.UORO(3))
    _, g2, _ = _grad(NET, nd.rtrl.UORO(jr.PRNGKey(3)))
    _, g3, _ = _grad(NET, nd.rtrl.UORO(4))
    assert bool(info["converged"])
    assert_tree_close(g1, g2, rtol=0, atol=0)
    assert rel_error(g1, g3) > 1e-3


def test_uoro_online_with_one_update_is_a_step_with_its_trajectory_gradient():
    # Same grid, same step count, same signs: online learning and nd.RTRL draw alike.
    lr = 0.1
    trained, _ = nd.online.fit_online(
        NET, XS, YS, optimizer=optax.sgd(lr), update_every=T, weights=OBJ.weights, sensitivity=nd.rtrl.UORO(2)
    )
    _, g, _ = _grad(NET, nd.rtrl.UORO(2))
    expected = jax.tree.map(lambda p, d: p - lr * d, eqx.filter(NET, eqx.is_inexact_array), g)
    assert_tree_close(eqx.filter(trained, eqx.is_inexact_array), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_uoro_with_a_runge_kutta_solver():
    # (Slow: the quick compare_estimators run, in CI, steps UORO with Tsit5 too.)
    # diffrax's Runge-Kutta solvers loop over their stages in a reverse-mode-only while loop
    # by default; UORO differentiates the step forwards too (A u), so it steps the JVP with
    # a plain loop: the same gradient as with a forward-and-reverse one.
    tsit5 = dict(solver=diffrax.Tsit5(), dt0=0.5)
    _, g, info = _grad(NET, nd.rtrl.UORO(1), **tsit5)
    _, g_bounded, _ = _grad(NET, nd.rtrl.UORO(1), solver=diffrax.Tsit5(scan_kind="bounded"), dt0=0.5)
    assert bool(info["converged"])
    assert_tree_close(g, g_bounded, rtol=1e-12, atol=1e-14)


def test_uoro_refuses_a_steady_state():
    with pytest.raises(ValueError, match="cannot serve a SteadyState objective: its sensitivities are redrawn"):
        nd.value_and_grad(NET, XS[0], YS[0], objective=nd.SteadyState(), estimator=nd.RTRL(nd.rtrl.UORO(0)))


# ---------------------------------------------------------------------------------------
# RFLO
# ---------------------------------------------------------------------------------------


def test_rflo_is_exact_without_recurrence():
    # W = 0: J = -I, the leak alone, which is all RFLO keeps.
    net = eqx.tree_at(lambda m: m.W, NET, jnp.zeros_like(NET.W))
    _, exact, _ = _grad(net, nd.rtrl.Exact())
    _, rflo, info = _grad(net, nd.rtrl.RFLO())
    assert bool(info["converged"])
    assert float(jnp.max(jnp.abs(exact.W))) > 1e-3
    assert_tree_close(rflo, exact, rtol=1e-10, atol=1e-12)


def test_rflo_is_biased_but_aligned():
    # Observed on this CTRNN: cosine to exact RTRL 0.977 (SparseSnAp1 0.984); RFLO differs
    # from SnAp-1 by the dropped self-coupling f'(h_i) W_ii.
    from helpers import cosine

    _, exact, _ = _grad(NET, nd.rtrl.Exact())
    _, rflo, _ = _grad(NET, nd.rtrl.RFLO())
    _, snap, _ = _grad(NET, nd.rtrl.SparseSnAp1())
    c, cs = cosine(rflo, exact), cosine(snap, exact)
    print(f"cosine to exact RTRL: RFLO {c:.4f}, SparseSnAp1 {cs:.4f}")
    assert 0.5 < c < 1 - 1e-6 and rel_error(rflo, snap) > 1e-6


@pytest.mark.parametrize(
    "sens", [nd.rtrl.SparseSnAp1(), nd.rtrl.UORO(1), nd.rtrl.RFLO()], ids=["sparse-snap1", "uoro", "rflo"]
)
def test_batch_path_is_the_mean_of_the_examples(sens, getkey):
    xs, ys = jr.uniform(getkey(), (3, T, 3)), jr.normal(getkey(), (3, T, 2))
    loss, g, info = nd.batch_value_and_grad(NET, xs, ys, objective=OBJ, estimator=nd.RTRL(sens), **EULER1)
    per = [_grad(NET, sens, xs=xs[i], ys=ys[i]) for i in range(3)]
    np.testing.assert_allclose(loss, np.mean([p[0] for p in per]), rtol=1e-12)
    assert_tree_close(g, jax.tree.map(lambda *a: sum(a) / 3, *[p[1] for p in per]), rtol=1e-10, atol=1e-13)
    assert bool(jnp.all(info["converged"]))


def test_sparse_layout_refuses_traced_connectivity(getkey):
    # A sparse CTRNN's connectivity indices are traced under jit: the pattern is unknown
    # at trace time.
    net = nd.networks.CTRNN(6, 3, 2, density=0.5, key=getkey())
    with pytest.raises(ValueError, match=r"nd\.rtrl\.RFLO\(\) reads the pattern of dF/dw .* structure is traced"):
        _grad(net, nd.rtrl.RFLO())
