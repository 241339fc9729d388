"""`nd.relaxation.Backoff`: a step that shrinks per example where `dt0` overshoots, the
`FixedStep` iterates where it does not, and the steady-state estimators exact with it (the
RBP adjoint runs with the forward's final step, EP's nudged phases start at it)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import assert_tree_close, dense_ift_grad


def _ctrnn_with(W, n_in=3):
    """A tanh CTRNN whose recurrent matrix is `W`: the Jacobian at an equilibrium is
    `-I + diag(tanh'(.)) W`, so `W = -2I` puts its eigenvalues near -3 for small drives (Euler
    at dt0 = 1 overshoots, |1 - 3| = 2 > 1; at 0.5 it contracts) and near -1 for drives that
    saturate the units."""
    W = jnp.asarray(W, jnp.float64)
    net = nd.networks.CTRNN(W.shape[0], n_in, 2, key=jr.PRNGKey(0))
    net = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
    return eqx.tree_at(lambda m: m.W, net, W)


# Its Jacobian at the first input's equilibrium has eigenvalues from -2.45 to -3.45 (-3.45 +-
# 0.37i): Euler at dt0 = 1 overshoots (|1 - 3.45| > 1); at 0.5 the stiffest mode still swings
# and slowly (1 - 0.5 * 3.45 = -0.72, a residual falling by half per two steps); at 0.25
# every mode contracts monotonically (0.14 to 0.39 per step).
STIFF = _ctrnn_with(-2.0 * jnp.eye(6) + 0.3 * jr.normal(jr.PRNGKey(3), (6, 6), jnp.float64))
# A small drive (stiff: overshoots at dt0 = 1), a saturating one (converges at 1), none.
X = jnp.array([[0.1, -0.1, 0.05], [20.0, -20.0, 20.0], [0.0, 0.0, 0.0]])


def _newton(net, x):
    return dense_ift_grad(net, x, jnp.zeros(net.n_out))[2]


def test_backoff_shrinks_the_step_per_example_where_dt0_overshoots():
    r, info = jax.vmap(lambda x: nd.relax(STIFF, x, relaxation=nd.relaxation.Backoff()))(X)
    assert bool(jnp.all(info["converged"])), info["result"]
    np.testing.assert_array_equal(info["dt"], [0.25, 1.0, 1.0])
    for i, x in enumerate(X):
        np.testing.assert_allclose(r[i], _newton(STIFF, x), rtol=1e-8, atol=1e-9)
    # The fixed step at dt0 = 1 oscillates about the first equilibrium: stopped as stagnated.
    _, fixed = jax.vmap(lambda x: nd.relax(STIFF, x, relaxation=nd.relaxation.FixedStep(check_every=2)))(X)
    assert jax.tree.map(lambda a: a[0], fixed["result"]) == nd.RESULTS.stagnated
    # Where dt0 converges, Backoff runs exactly FixedStep's iterates.
    r_fixed, _ = jax.vmap(lambda x: nd.relax(STIFF, x, relaxation=nd.relaxation.FixedStep(check_every=2)))(X[1:])
    np.testing.assert_array_equal(r[1:], r_fixed)
    np.testing.assert_array_equal(info["steps"][1:], fixed["steps"][1:])
    # Eigenvalues near -5 (dt0 < 0.4 contracts): a step that shrinks twice; one that may
    # not shrink at all is FixedStep again (stagnated).
    stiffer = _ctrnn_with(-4.0 * jnp.eye(6))
    r, info = nd.relax(stiffer, X[0], relaxation=nd.relaxation.Backoff())
    assert bool(info["converged"]) and float(info["dt"]) == 0.25
    np.testing.assert_allclose(r, _newton(stiffer, X[0]), rtol=1e-8, atol=1e-9)
    _, info = nd.relax(stiffer, X[0], relaxation=nd.relaxation.Backoff(max_halvings=0))
    assert info["result"] == nd.RESULTS.stagnated and float(info["dt"]) == 1.0


def test_rbp_with_backoff_is_exact_and_its_adjoint_needs_the_forward_step():
    x, y = X[0], jnp.array([0.3, -0.2])
    _, ref, _ = dense_ift_grad(STIFF, x, y)
    obj, backoff = nd.SteadyState(), nd.relaxation.Backoff()
    _, g, info = nd.value_and_grad(STIFF, x, y, objective=obj, estimator=nd.RBP(), relaxation=backoff)
    assert bool(info["converged"]) and float(info["dt"]) == 0.25
    assert_tree_close(g, ref, rtol=1e-8, atol=1e-10, what="rbp+backoff")
    # The adjoint dynamics overshoot at the same eigenvalues: at dt = 1 they diverge, and
    # under Backoff's rule they shrink their step as the forward did.
    r = _newton(STIFF, x)
    _, vjp = jax.vjp(lambda r: STIFF(0.0, r, x), r)
    J = jax.jacfwd(lambda r: STIFF(0.0, r, x))(r)
    g_r = jnp.linspace(-1.0, 1.0, 6)
    plain = nd.adjoint.AdjointODE().solve(lambda u: vjp(u)[0], g_r, lambda: J, False, 1.0)
    assert not bool(plain.converged)
    ruled = nd.adjoint.AdjointODE(backoff=backoff).solve(lambda u: vjp(u)[0], g_r, lambda: J, False, 1.0)
    assert bool(ruled.converged)
    np.testing.assert_allclose(ruled.value, jnp.linalg.solve(J.T, -g_r), rtol=1e-8, atol=1e-10)
    # A forward relaxation that starts at its equilibrium (no input, no bias: r* = 0) never
    # tests dt0 = 1; RBP's adjoint, under the forward's rule, does.
    at_rest = eqx.tree_at(lambda m: m.b, STIFF, jnp.zeros(6))
    _, g, info = nd.value_and_grad(at_rest, X[2], y, objective=obj, estimator=nd.RBP(), relaxation=backoff)
    assert bool(info["converged"]) and float(info["dt"]) == 1.0 and int(info["steps"]) <= 2
    assert_tree_close(g, dense_ift_grad(at_rest, X[2], y)[1], rtol=1e-8, atol=1e-10, what="rbp at rest")
    # jax.grad through nd.relax takes the same implicit adjoint, at the forward's step.
    params, static = eqx.partition(STIFF, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        return nd.losses.squared_error(m.readout(nd.relax(m, x, relaxation=backoff)[0]), y)

    assert_tree_close(jax.grad(loss)(params), ref, rtol=1e-8, atol=1e-10, what="grad(relax)+backoff")
    # The batch path: the mean of the exact per-example gradients, each example with its own
    # step (the third, at rest only if the bias is zero, relaxes at dt0 = 1).
    Y = jnp.tile(y, (3, 1))
    loss_b, g_b, info_b = jax.jit(
        lambda net: nd.batch_value_and_grad(net, X, Y, objective=obj, estimator=nd.RBP(), relaxation=backoff)
    )(STIFF)
    np.testing.assert_array_equal(info_b["dt"], [0.25, 1.0, 1.0])
    refs = [dense_ift_grad(STIFF, xi, y)[1] for xi in X]
    mean_ref = jax.tree.map(lambda *a: sum(a) / 3, *refs)
    assert_tree_close(g_b, mean_ref, rtol=1e-8, atol=1e-10, what="batch rbp+backoff")


@pytest.mark.parametrize("variant", ["centered", "one-sided"])
def test_ep_with_backoff_is_ep_at_the_step_it_found(variant):
    # The nudged phases start at the free phase's final step: the same relaxations, the
    # same gradient, as EP with FixedStep at dt0 = 0.25.
    x, y = X[0], jnp.array([0.3, -0.2])
    ep, obj = nd.EP(0.01, variant=variant), nd.SteadyState()
    _, g, info = nd.value_and_grad(STIFF, x, y, objective=obj, estimator=ep, relaxation=nd.relaxation.Backoff())
    _, g_half, info_half = nd.value_and_grad(STIFF, x, y, objective=obj, estimator=ep, dt0=0.25)
    assert bool(info["converged"]) and float(info["dt"]) == 0.25
    assert int(info["nudged_steps"]) == int(info_half["nudged_steps"])
    # Not bit for bit: the free phases stop at different points within the tolerance, an
    # error the estimate divides by beta (EP's own bias here, an asymmetric W, is ~1e-2).
    assert_tree_close(g, g_half, rtol=1e-7, atol=1e-12, what=f"ep-{variant}")


def test_backoff_errors_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match="Backoff needs window >= 1"):
        nd.relaxation.Backoff(window=0)
    with pytest.raises(ValueError, match="Backoff needs 0 < factor < 1"):
        nd.relaxation.Backoff(factor=1.5)
    with pytest.raises(ValueError, match="Backoff needs max_halvings >= 0"):
        nd.relaxation.Backoff(max_halvings=-1)
    with pytest.raises(ValueError, match="Backoff needs patience >= 1"):
        nd.relaxation.Backoff(patience=0)
    x, y = X[0], jnp.zeros(2)
    for estimator, match in [(nd.BPTT(), "cannot be differentiated through"), (nd.RTRL(), "cannot use relaxation")]:
        with pytest.raises(ValueError, match=match):
            nd.value_and_grad(
                STIFF, x, y, objective=nd.SteadyState(), estimator=estimator, relaxation=nd.relaxation.Backoff()
            )


def test_fit_reports_the_step_backoff_ended_with(capsys):
    """`fit`'s rows carry `mean_dt`, the mean over the epoch's examples of the step their
    relaxations ended with, and the progress line prints it: one full batch, so the row is
    the initial network's relaxations (the first example backs off to 0.25, the others keep
    dt0 = 1), and `TrainStep`'s info carries the same statistic."""
    import optax

    Y = jnp.zeros((3, 2))
    kw = dict(objective=nd.SteadyState(), estimator=nd.RBP(), relaxation=nd.relaxation.Backoff())
    _, _, info = nd.batch_value_and_grad(STIFF, X, Y, **kw)
    np.testing.assert_array_equal(info["dt"], [0.25, 1.0, 1.0])
    _, history = nd.training.fit(
        STIFF, (X, Y), optimizer=optax.sgd(0.0), epochs=1, batch_size=3, key=jr.PRNGKey(0), **kw
    )
    assert history[0]["mean_dt"] == pytest.approx(0.75, rel=1e-12) and history[0]["converged_rate"] == 1.0
    assert "dt 0.75" in capsys.readouterr().err
    step = nd.training.make_train_step(kw["objective"], kw["estimator"], optax.sgd(0.0), relaxation=kw["relaxation"])
    params, static = eqx.partition(STIFF, eqx.is_inexact_array)
    *_, step_info = step(params, step.init(params), static, X, Y)
    assert float(step_info["mean_dt"]) == pytest.approx(0.75, rel=1e-12)
    # FixedStep keeps dt0: no column.
    _, fixed = nd.training.fit(
        STIFF,
        (X[1:], Y[1:]),
        objective=kw["objective"],
        estimator=kw["estimator"],
        optimizer=optax.sgd(0.0),
        epochs=1,
        batch_size=2,
        key=jr.PRNGKey(0),
        progress=False,
    )
    assert "mean_dt" not in fixed[0]


def test_fit_warm_starts_each_batch_at_the_step_most_of_the_last_one_ended_with(tmp_path):
    """`fit(warm_backoff=True)` (the default): the epoch's first batch relaxes from dt0, each
    later one from the step most of the previous batch's relaxations ended with. Small drives
    all back off to 0.25 on the stiff network: from the second batch on they start there (the
    row's `start_dt` is the mean of 1, 0.25, 0.25), take fewer steps, end at the same step
    and give the same loss. The level moves when most of a batch backed off: a mean step of
    0.75 (one example in three at 0.25) keeps dt0."""
    import optax

    small = 0.1 * jr.normal(jr.PRNGKey(5), (9, 3), jnp.float64)
    kw = dict(
        objective=nd.SteadyState(),
        estimator=nd.RBP(),
        relaxation=nd.relaxation.Backoff(),
        optimizer=optax.sgd(0.0),  # the same network for every batch
        epochs=1,
        batch_size=3,
        key=jr.PRNGKey(0),
        progress=False,
    )
    Y = jnp.zeros((9, 2))
    _, _, info = nd.batch_value_and_grad(
        STIFF, small, Y, **{k: kw[k] for k in ("objective", "estimator", "relaxation")}
    )
    np.testing.assert_array_equal(info["dt"], 0.25)
    _, warm = nd.training.fit(STIFF, (small, Y), **kw)
    _, cold = nd.training.fit(STIFF, (small, Y), warm_backoff=False, **kw)
    assert warm[0]["start_dt"] == pytest.approx(0.5, rel=1e-12) and "start_dt" not in cold[0]
    assert warm[0]["mean_dt"] == cold[0]["mean_dt"] == 0.25
    assert warm[0]["train_loss"] == pytest.approx(cold[0]["train_loss"], rel=1e-6)
    # Why: started at 0.25, a relaxation skips the tests it spent at 1 and 0.5.
    steps = [
        int(nd.relax(STIFF, small[0], relaxation=nd.relaxation.Backoff(initial=s))[1]["steps"]) for s in (None, 0.25)
    ]
    assert steps[1] < steps[0], steps

    # The rule: the rounded log of the batch's mean step over the start, never up, at most
    # max_halvings below dt0; a non-finite mean keeps the level.
    from neurodyn.training import _next_level

    rule = nd.relaxation.Backoff(max_halvings=3)
    level = jnp.asarray(0, jnp.int32)
    for start, mean_dt, want in [(1.0, 0.75, 0), (1.0, 0.70, 1), (1.0, 0.25, 2), (1.0, 1e-9, 3), (1.0, jnp.nan, 0)]:
        assert int(_next_level(level, start, jnp.float64(mean_dt), rule)) == want, (start, mean_dt)
    assert int(_next_level(level + 1, 0.5, jnp.float64(0.5), rule)) == 1
    assert int(_next_level(level + 1, 0.5, jnp.float64(0.3), rule)) == 2

    # The setting is part of the run's fingerprint: a run resumed without it is refused.
    run = nd.runs.RunDir(tmp_path / "run")
    nd.training.fit(STIFF, (small, Y), run=run, **kw)
    with pytest.raises(nd.runs.StaleRunError):
        nd.training.fit(STIFF, (small, Y), run=nd.runs.RunDir(tmp_path / "run"), warm_backoff=False, **kw)
