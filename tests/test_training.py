import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import neurodyn as nd
from helpers import DyingRun as _DyingRun, Killed as _Killed
from neurodyn.preprocessing import Preprocessor
from neurodyn.runs import RunDir
from neurodyn.training import stop_reason, Stopping


OBJ = nd.SteadyState(nd.losses.softmax_cross_entropy)


def _moons(n=64):
    X, y = nd.data.double_moon(jr.PRNGKey(0), n, distance=-1.0)
    X = Preprocessor.fit(X, "standardize")(X)
    return jnp.asarray(X, jnp.float64), y


def _net(key=0):
    return nd.networks.Layered((2, 8, 2), nd.activations.relu, key=jr.PRNGKey(key))


def _params(net):
    return eqx.filter(net, eqx.is_inexact_array)


def test_one_full_batch_step_is_mean_of_per_example_gradients_plus_l2():
    X, y = _moons(16)
    net, lr, l2 = _net(), 0.1, 0.01
    out, history = nd.training.fit(
        net,
        (X, y),
        objective=OBJ,
        estimator=nd.BPTT(),
        optimizer=optax.sgd(lr),
        epochs=1,
        batch_size=16,
        key=jr.PRNGKey(1),
        l2=l2,
        progress=False,
    )
    losses, grads, _ = jax.vmap(lambda x, t: nd.value_and_grad(net, x, t, objective=OBJ, estimator=nd.BPTT()))(X, y)
    expected = jax.tree.map(lambda p, g: p - lr * (jnp.mean(g, 0) + l2 * p), _params(net), grads)
    assert eqx.tree_equal(_params(out), expected, rtol=1e-10, atol=1e-12)
    assert history[0]["train_loss"] == pytest.approx(float(jnp.mean(losses)), rel=1e-12)
    assert history[0]["converged_rate"] == 1.0 and history[0]["stopped"] == "epochs"


def test_sgd_momentum_is_the_seed_notes_rule():
    # w(n+1) = w(n) + alpha dw(n-1) - eta g(n)  (heavy-ball momentum, Haykin 2009, sec. 4.4), with dw(n) = w(n+1) - w(n).
    eta, alpha = 0.1, 0.9
    opt = nd.config.optimizer("sgd", eta, momentum=alpha)
    w = jnp.asarray([1.0, -2.0])
    grads = [jnp.asarray([0.5, 1.0]), jnp.asarray([-1.0, 0.25]), jnp.asarray([0.3, 0.3])]
    state, w_opt, w_seed, dw = opt.init(w), w, w, jnp.zeros(2)
    for g in grads:
        upd, state = opt.update(g, state, w_opt)
        w_opt = optax.apply_updates(w_opt, upd)
        dw = alpha * dw - eta * g
        w_seed = w_seed + dw
    np.testing.assert_allclose(w_opt, w_seed, rtol=1e-12)
    with pytest.raises(nd.config.ConfigError, match="unknown optimizer 'adma'; did you mean 'adam'"):
        nd.config.optimizer("adma", 0.1)


def test_training_learns_and_logs_rows(tmp_path):
    X, y = _moons(64)
    run = RunDir(tmp_path / "run")
    net, history = nd.training.fit(
        _net(),
        (X, y),
        objective=OBJ,
        estimator=nd.RBP(),
        optimizer=optax.adam(0.05),
        epochs=6,
        batch_size=16,
        key=jr.PRNGKey(2),
        valid=(X, y),
        run=run,
        progress=False,
        log_extra=dict(estimator="rbp"),
    )
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert run.rows() == history and all(r["estimator"] == "rbp" for r in history)
    assert {"epoch", "train_loss", "grad_norm", "converged_rate", "valid_accuracy", "seconds"} <= set(history[0])


def test_stop_reasons():
    rows = [
        dict(train_loss=1.0, grad_norm=1.0, valid_accuracy=0.5),
        dict(train_loss=0.5, grad_norm=0.5, valid_accuracy=0.8),
    ]
    assert stop_reason(rows, Stopping(grad_norm=0.4, rel_loss_change=0.4, patience=1)) is None
    assert stop_reason(rows, Stopping(grad_norm=0.6)) == "grad_norm"
    assert stop_reason(rows, Stopping(rel_loss_change=0.6)) == "rel_loss_change"  # |0.5 - 1| / 1 = 0.5
    peaked = rows + [
        dict(train_loss=0.4, grad_norm=0.4, valid_accuracy=0.8),
        dict(train_loss=0.3, grad_norm=0.3, valid_accuracy=0.7),
    ]
    assert stop_reason(peaked, Stopping(patience=3)) is None
    assert stop_reason(peaked, Stopping(patience=2)) == "patience"  # the peak (first 0.8) is 2 epochs back


def test_grad_norm_threshold_stops_and_a_finished_run_is_not_retrained(tmp_path):
    X, y = _moons(32)
    kw = dict(
        objective=OBJ,
        estimator=nd.BPTT(),
        optimizer=optax.sgd(0.1),
        epochs=5,
        batch_size=16,
        key=jr.PRNGKey(3),
        stopping=Stopping(grad_norm=1e3),
        progress=False,
    )
    net, history = nd.training.fit(_net(), (X, y), run=RunDir(tmp_path), **kw)
    assert len(history) == 1 and history[0]["stopped"] == "grad_norm"
    again, history2 = nd.training.fit(_net(), (X, y), run=RunDir(tmp_path), **kw)
    assert history2 == history and eqx.tree_equal(_params(again), _params(net))


def test_interrupted_fit_resumes_to_the_uninterrupted_result(tmp_path):
    X, y = _moons(32)
    kw = dict(
        objective=OBJ,
        estimator=nd.BPTT(),
        optimizer=optax.sgd(0.05, momentum=0.9),
        epochs=4,
        batch_size=8,
        key=jr.PRNGKey(4),
        valid=(X, y),
        progress=False,
    )
    ref, ref_history = nd.training.fit(_net(), (X, y), **kw)
    with pytest.raises(_Killed):
        nd.training.fit(_net(), (X, y), run=_DyingRun(tmp_path, after=2), **kw)
    run = RunDir(tmp_path)
    assert [r["epoch"] for r in run.rows()] == [1]  # killed between checkpoint 2 and its log line
    out, history = nd.training.fit(_net(), (X, y), run=run, **kw)
    assert eqx.tree_equal(_params(out), _params(ref), rtol=0, atol=0)  # bit for bit
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in ref_history]
    assert [r["epoch"] for r in run.rows()] == [1, 2, 3, 4]


def test_batch_larger_than_data_raises():
    X, y = _moons(8)
    with pytest.raises(ValueError, match="batch_size=16 exceeds the 8 training examples"):
        nd.training.fit(
            _net(),
            (X, y),
            objective=OBJ,
            estimator=nd.BPTT(),
            optimizer=optax.sgd(0.1),
            epochs=1,
            batch_size=16,
            key=jr.PRNGKey(0),
            progress=False,
        )


def test_transition_init_sets_the_std_of_induced_local_fields():
    X = jr.normal(jr.PRNGKey(5), (200, 3)) * 4.0 + 1.0
    net = nd.training.transition_init(
        nd.networks.Layered((3, 6, 5, 2), nd.activations.tanh, key=jr.PRNGKey(6)), X, scale=0.7
    )
    below = X
    for W, b, f in zip(net.weights, net.biases, net.activations):
        z = below @ W.T + b[None]
        assert float(jnp.std(z)) == pytest.approx(0.7, rel=1e-9)
        below = f(z)
    hop = nd.training.transition_init(nd.networks.Hopfield(3, 4, 2, key=jr.PRNGKey(7)), X)
    assert float(jnp.std(X @ hop.U.T)) == pytest.approx(1.0, rel=1e-9)
    elman = nd.training.transition_init(nd.networks.Elman(5, 3, 2, key=jr.PRNGKey(8)), X, scale=0.5)
    assert float(jnp.std(X @ elman.W_b.T)) == pytest.approx(0.5, rel=1e-9)
    # A layered Hopfield network: the input weights only; the couplings between layers
    # (up and, transposed, down) keep their gain.
    lh = nd.networks.LayeredHopfield((3, 6, 5, 2), key=jr.PRNGKey(10))
    lh_scaled = nd.training.transition_init(lh, X, scale=0.8)
    assert float(jnp.std(X @ lh_scaled.weights[0].T)) == pytest.approx(0.8, rel=1e-9)
    assert all(jnp.array_equal(a, b) for a, b in zip(lh.weights[1:], lh_scaled.weights[1:]))
    with pytest.raises(ValueError, match="does not know the input weights"):
        nd.training.transition_init(object(), X)
    # A network that does not declare where its inputs enter is refused, naming the capability.
    narx = nd.networks.NARX(3, 1, 2, 4, key=jr.PRNGKey(9))
    with pytest.raises(ValueError, match="AbstractInputRescalable"):
        nd.training.transition_init(narx, X)


@pytest.mark.parametrize("method", ["center", "standardize", "pca", "zca"])
def test_preprocessing_fitted_on_training_data_only(method):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3))
    train = rng.standard_normal((500, 3)) @ A + 5.0
    test = rng.standard_normal((100, 3)) @ A - 5.0
    pre = Preprocessor.fit(train, method, eps=0.0)
    Z = np.asarray(pre(jnp.asarray(train)), np.float64)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-4)
    cov = np.cov(Z.T, bias=True)
    if method == "standardize":
        np.testing.assert_allclose(np.diag(cov), 1.0, rtol=1e-4)
    if method in ("pca", "zca"):
        np.testing.assert_allclose(cov, np.eye(3), atol=1e-4)
    if method == "zca":  # ZCA is the symmetric whitening: the closest to the original axes
        np.testing.assert_allclose(pre.transform, pre.transform.T, atol=1e-5)
    # Test data is transformed with the training statistics, not its own.
    assert np.all(np.asarray(pre(jnp.asarray(test))).mean(0) != pytest.approx(0.0, abs=0.1))
    with pytest.raises(ValueError, match="unknown preprocessing 'whiten'"):
        Preprocessor.fit(train, "whiten")


# One optimiser object: fits with equal settings share one compilation of the epoch.
_SGD = optax.sgd(1e-2)


def _tiny(n=32):
    X, y = _moons(n)
    return X, y, nd.networks.Layered((2, 4, 2), nd.activations.relu, key=jr.PRNGKey(9))


def test_changed_settings_are_refused_not_answered_with_the_old_numbers(tmp_path):
    X, y, net = _tiny()
    kw = dict(
        objective=OBJ, estimator=nd.BPTT(), optimizer=_SGD, epochs=2, batch_size=8, key=jr.PRNGKey(1), progress=False
    )
    _, history = nd.training.fit(net, (X, y), run=RunDir(tmp_path), **kw)
    changes = dict(
        estimator=dict(estimator=nd.RBP()),
        batch_size=dict(batch_size=16),
        optimizer=dict(optimizer=optax.sgd(1e-1)),
        l2=dict(l2=1e-3),
        key=dict(key=jr.PRNGKey(2)),
        options=dict(dt0=0.05),
    )
    for what, change in changes.items():
        with pytest.raises(nd.runs.StaleRunError, match=rf"differs in settings\.{what}\b.*choose another --out"):
            nd.training.fit(net, (X, y), run=RunDir(tmp_path), **dict(kw, **change))
    with pytest.raises(nd.runs.StaleRunError, match=r"differs in settings\.initial_params"):
        nd.training.fit(_net(), (X, y), run=RunDir(tmp_path), **kw)
    with pytest.raises(nd.runs.StaleRunError, match=r"differs in settings\.train"):
        nd.training.fit(net, (X[:24], y[:24]), run=RunDir(tmp_path), **kw)
    # More epochs continue the run; the same settings return it.
    _, longer = nd.training.fit(net, (X, y), run=RunDir(tmp_path), **dict(kw, epochs=3))
    assert longer[0] == history[0] and longer[1] == {k: v for k, v in history[1].items() if k != "stopped"}
    assert len(longer) == 3 and longer[2]["stopped"] == "epochs" and RunDir(tmp_path).rows() == longer
    assert nd.training.fit_settings(
        net, (X, y), objective=OBJ, estimator=nd.BPTT(), optimizer=optax.sgd(1e-2), batch_size=8
    )["optimizer"].endswith("-0.01, -0.01")


def test_non_finite_loss_raises_one_line_and_is_never_checkpointed(tmp_path):
    X, y, net = _tiny()
    kw = dict(objective=OBJ, estimator=nd.BPTT(), epochs=3, batch_size=8, key=jr.PRNGKey(1), progress=False)
    with pytest.raises(
        nd.training.NonFiniteError, match=r"^epoch 1/3: .*non-finite.*lower the learning rate, or dt0"
    ) as e:
        nd.training.fit(net, (X, y), optimizer=optax.sgd(jnp.nan), run=RunDir(tmp_path / "a"), **kw)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert RunDir(tmp_path / "a").checkpoint(_params(net)) == (None, None) and RunDir(tmp_path / "a").rows() == []
    # Diverging in epoch 2 (4 steps per epoch): "stop" keeps epoch 1's parameters and says why.
    opt = optax.sgd(lambda count: jnp.where(count >= 4, jnp.nan, 1e-2))
    ref, ref_history = nd.training.fit(net, (X, y), optimizer=_SGD, **dict(kw, epochs=1))
    with pytest.raises(nd.training.NonFiniteError, match=r"epoch 2/3: .*last finite checkpoint \(epoch 1\)"):
        nd.training.fit(net, (X, y), optimizer=opt, run=RunDir(tmp_path / "b"), **kw)
    _, meta = RunDir(tmp_path / "b").checkpoint((_params(net), opt.init(_params(net))))
    assert meta["step"] == 1
    out, history = nd.training.fit(net, (X, y), optimizer=opt, on_nonfinite="stop", run=RunDir(tmp_path / "c"), **kw)
    assert [r.get("stopped") for r in history] == [None, "nonfinite"]
    assert [history[0][k] for k in ("train_loss", "grad_norm")] == [
        ref_history[0][k] for k in ("train_loss", "grad_norm")
    ]
    assert eqx.tree_equal(_params(out), _params(ref), rtol=0, atol=0)
    again, history2 = nd.training.fit(net, (X, y), optimizer=opt, on_nonfinite="stop", run=RunDir(tmp_path / "c"), **kw)
    assert (
        eqx.tree_equal(_params(again), _params(ref), rtol=0, atol=0) and len(history2) == 2
    )  # finished: not retrained


def test_bad_data_is_named_before_training_not_reported_as_divergence():
    X, y, net = _tiny()
    kw = dict(objective=OBJ, estimator=nd.BPTT(), optimizer=_SGD, epochs=1, batch_size=8, key=jr.PRNGKey(1))
    kw.update(progress=False)
    # A NaN input would surface as a non-finite loss, read as training that diverged.
    bad = X.at[5, 1].set(jnp.nan).at[9, 0].set(jnp.inf)
    with pytest.raises(
        ValueError, match=r"^train X has non-finite values .* in 2 of its 32 rows, the first row 5;"
    ) as e:
        nd.training.fit(net, (bad, y), **kw)
    # One line from an experiment's entry point: a ConfigError, not a NonFiniteError.
    assert isinstance(e.value, nd.training.DataError) and isinstance(e.value, nd.config.ConfigError)
    assert not isinstance(e.value, nd.training.NonFiniteError) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^test X has non-finite .* in 1 of its 32 rows, the first row 9;.*Drop"):
        nd.training.fit(net, (X, y), test=(X.at[9, 0].set(jnp.nan), y), **kw)
    # A class index past the readout's classes: a NaN loss inside the jitted epoch.
    with pytest.raises(ValueError, match=r"^example 3 of the train set: y holds class index 2, outside \[0, 2\)"):
        nd.training.fit(net, (X, y.at[3].set(2)), **kw)
    with pytest.raises(ValueError, match=r"^example 0 of the valid set: y holds class index -1"):
        nd.training.fit(net, (X, y), valid=(X, y.at[0].set(-1)), **kw)
    with pytest.raises(ValueError, match=r"^valid labels must be class indices .*not whole numbers"):
        nd.training.fit(net, (X, y), valid=(X, jax.nn.one_hot(y, 2)[:, 0] / 2), **kw)
    with pytest.raises(ValueError, match=r"^train: X has 32 examples but Y has shape \(31,\)"):
        nd.training.fit(net, (X, y[:31]), **kw)
    with pytest.raises(ValueError, match=r"^example 0 of the train set: x has shape \(3,\)"):
        nd.training.fit(net, (jnp.ones((32, 3)), y), **kw)
    # Float one-hot targets: every value checked; whole-number float labels score as labels.
    one_hot = jax.nn.one_hot(y, 2)
    sq = dict(kw, objective=nd.SteadyState(nd.losses.squared_error))
    with pytest.raises(ValueError, match=r"^train Y has non-finite values .* in 1 of its 32 rows, the first row 4;"):
        nd.training.fit(net, (X, one_hot.at[4, 1].set(jnp.nan)), **sq)
    _, history = nd.training.fit(net, (X, one_hot), valid=(X, y.astype(jnp.float32)), **sq)
    assert 0 <= history[0]["valid_accuracy"] <= 1


def test_restore_best_returns_the_first_epoch_of_the_validation_peak_and_resumes_to_it(tmp_path):
    X, y = _moons(64)
    train, valid = (X[:32], y[:32]), (X[32:], y[32:])
    kw = dict(
        objective=OBJ,
        estimator=nd.BPTT(),
        optimizer=optax.sgd(0.01, momentum=0.9),
        batch_size=8,
        key=jr.PRNGKey(0),
        valid=valid,
        progress=False,
    )
    last, history = nd.training.fit(_net(), train, epochs=8, **kw)
    accs = [r["valid_accuracy"] for r in history]
    peak = int(np.argmax(accs)) + 1  # the first epoch of the peak
    # The setting must exercise the rule: a peak after a rise, then a plateau at it.
    assert 1 < peak < 8 and accs[-1] == accs[peak - 1] and accs[0] < accs[peak - 1], accs
    at_peak, _ = nd.training.fit(_net(), train, epochs=peak, **kw)
    best, best_history = nd.training.fit(_net(), train, epochs=8, restore_best=True, **kw)
    assert [r["train_loss"] for r in best_history] == [r["train_loss"] for r in history]  # training is unchanged
    assert eqx.tree_equal(_params(best), _params(at_peak), rtol=0, atol=0)
    assert not eqx.tree_equal(_params(best), _params(last), rtol=0, atol=0)
    # Killed after epoch 5 (past the peak) and resumed: the best epoch's network, from the checkpoint.
    with pytest.raises(_Killed):
        nd.training.fit(_net(), train, epochs=8, restore_best=True, run=_DyingRun(tmp_path, after=5), **kw)
    resumed, _ = nd.training.fit(_net(), train, epochs=8, restore_best=True, run=RunDir(tmp_path), **kw)
    assert eqx.tree_equal(_params(resumed), _params(at_peak), rtol=0, atol=0)
    # restore_best is part of the run's settings: the same run without it is another run.
    with pytest.raises(nd.runs.StaleRunError):
        nd.training.fit(_net(), train, epochs=8, run=RunDir(tmp_path), **kw)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(batch_size=0), r"^batch_size must be an integer >= 1, got 0\.$"),
        (dict(batch_size=2.5), r"^batch_size must be an integer >= 1, got 2\.5\.$"),
        (dict(epochs=-1), r"^epochs must be an integer >= 0, got -1\.$"),
        (dict(optimizer="adam"), r"^optimizer must be an optax transformation, e\.g\. optax\.adam"),
        (dict(estimator=nd.RBP), r"^estimator must be one of nd\.BPTT\(\)"),
        (dict(objective=nd.losses.softmax_cross_entropy), r"^objective must be nd\.SteadyState\(\.\.\.\)"),
        (dict(objective=nd.Trajectory(ts=(1.0,)), estimator=nd.RBP()), r"^RBP cannot serve a Trajectory objective"),
        (dict(key=0), r"^key must be a JAX random key, e\.g\. jax\.random\.key\(0\); got 0\.$"),
        (dict(valid=([0.0], [0], [1])), r"^valid must be a pair \(X, labels\), got tuple of 3\.$"),
        (dict(train_x=np.zeros(32)), r"^train X has shape \(32,\); a SteadyState objective takes \(N, n_in\)"),
        (
            dict(restore_best=True),
            r"^restore_best=True returns the parameters of the best validation epoch: pass valid=",
        ),
    ],
)
def test_bad_arguments_are_named_with_their_fix(change, message):
    X, y, net = _tiny()
    kw = dict(objective=OBJ, estimator=nd.BPTT(), optimizer=_SGD, epochs=1, batch_size=8, key=jr.PRNGKey(1))
    kw.update(progress=False)
    kw.update(change)
    X = kw.pop("train_x", X)
    with pytest.raises(ValueError, match=message):
        nd.training.fit(net, (X, y), **kw)


def test_progress_is_one_line_per_epoch_on_stderr(tmp_path, capsys):
    X, y, net = _tiny()
    kw = dict(
        objective=OBJ,
        estimator=nd.BPTT(),
        optimizer=_SGD,
        epochs=2,
        batch_size=8,
        key=jr.PRNGKey(1),
        valid=(X, y),
        log_extra=dict(estimator="bptt", seed=0),
    )
    nd.training.fit(net, (X, y), run=RunDir(tmp_path), **kw)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and str(tmp_path) in err[0] and str(tmp_path) in err[-1]
    assert err[1].startswith("[bptt/0] epoch 1/2  loss ") and "valid acc" in err[1] and "converged 100%" in err[1]
    assert "steps/s" in err[1] and "s/epoch" in err[1] and "ETA" in err[1] and "stopped: epochs" in err[2]
    nd.training.fit(net, (X, y), run=RunDir(tmp_path), **kw)  # finished: says so
    assert "finished already" in capsys.readouterr().err
    nd.training.fit(net, (X, y), progress=False, **kw)
    assert capsys.readouterr().err == ""


def test_a_falling_converged_rate_is_warned_about():
    from neurodyn.training import _converged_rate_fell

    def h(*rates):
        return [dict(converged_rate=r) for r in rates]

    assert _converged_rate_fell(h(1.0, 0.8))  # EP oscillating after two epochs: 100% -> 80%
    assert not _converged_rate_fell(h(1.0, 0.99))  # within 95%
    assert not _converged_rate_fell(h(0.9))  # a first epoch has nothing to fall from
    assert not _converged_rate_fell(h(0.9, 0.91))  # rising


def _ctrnn_with(W, n_in=3):
    """A tanh CTRNN whose recurrent matrix is `W` (the Jacobian at an equilibrium near 0 is
    about `-I + W`)."""
    W = jnp.asarray(W, jnp.float64)
    net = nd.networks.CTRNN(W.shape[0], n_in, 2, key=jr.PRNGKey(0))
    net = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, net)
    return eqx.tree_at(lambda m: m.W, net, W)


def test_the_dt0_probe_tells_an_overshooting_step_from_lost_equilibria():
    X = 0.1 * jr.normal(jr.PRNGKey(1), (16, 3), jnp.float64)
    # -I - 2I: a stable equilibrium (eigenvalues near -3) that Euler at dt0 = 1 overshoots
    # (|1 - 3| = 2 > 1): it oscillates about it; at dt0 = 0.5 the step contracts (|1 - 1.5|).
    stiff = _ctrnn_with(-2.0 * jnp.eye(6))
    rates = nd.training.dt0_probe(stiff, X)
    assert rates == {1.0: 0.0, 0.5: 1.0, 0.25: 1.0}
    advice = nd.training.dt0_advice(rates)
    assert "0% at dt0 = 1, 100% at dt0 = 0.5, 100% at dt0 = 0.25" in advice
    assert "pass dt0=0.5" in advice
    # The step is the user's: dt0 = 0.5 given, 0.25 is the advice when 0.5 overshoots too.
    stiffer = _ctrnn_with(-4.0 * jnp.eye(6))  # eigenvalues near -5: needs dt0 < 0.4
    rates = nd.training.dt0_probe(stiffer, X, dt0=0.5)
    assert rates == {0.5: 0.0, 0.25: 1.0, 0.125: 1.0}
    assert "pass dt0=0.25" in nd.training.dt0_advice(rates)
    # No equilibrium to converge to (an unstable focus, eigenvalues 1 +- 5i, inside a limit
    # cycle): no step helps, and the advice says so.
    cycle = _ctrnn_with(jnp.kron(jnp.eye(3), jnp.array([[2.0, -5.0], [5.0, 2.0]])))
    rates = nd.training.dt0_probe(cycle, X)
    assert max(rates.values()) == 0.0
    assert "a smaller step does not help; lower the learning rate" in nd.training.dt0_advice(rates)
    # Part of the probe overshoots, part has no equilibrium: both pieces of advice.
    partial = nd.training.dt0_advice({1.0: 0.2, 0.5: 0.6, 0.25: 0.55})
    assert partial.endswith(
        "a smaller step helps only in part: pass dt0=0.5 and lower the learning rate "
        "(the rest converge at no step tried)"
    )
    assert "does not help" in nd.training.dt0_advice({1.0: 0.2, 0.5: 0.25, 0.25: 0.29})
    # A tame network converges at its dt0: the failures were elsewhere.
    tame = _ctrnn_with(0.3 * jnp.eye(6))
    assert "converge at dt0 = 1" in nd.training.dt0_advice(nd.training.dt0_probe(tame, X))


def test_a_falling_converged_rate_warns_with_the_diagnosis(capsys):
    calls = []

    def advance(state, i):
        return state, dict(train_loss=1.0, converged_rate=(1.0, 0.5, 0.5)[i])

    def diagnose(state):
        calls.append(state)
        return "the diagnosis"

    nd.training.train_loop(advance, jnp.zeros(2), 3, diagnose=diagnose, tag="t")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and len(calls) == 2  # epochs 2 and 3, not epoch 1
    assert all(
        line.endswith("info['result'] says stagnated, max_steps or nonfinite); the diagnosis") for line in warnings
    )


def test_fit_probes_dt0_when_the_converged_rate_falls(monkeypatch, capsys):
    # A network whose relaxations overshoot at dt0 = 1 from the start; the rule that the rate
    # fell is forced, so the warning (and its probe) comes on the first epoch.
    monkeypatch.setattr(nd.training, "_converged_rate_fell", lambda history: True)
    X = 0.1 * jr.normal(jr.PRNGKey(1), (32, 3), jnp.float64)
    y = (X[:, 0] > 0).astype(int)
    nd.training.fit(
        _ctrnn_with(-2.0 * jnp.eye(6)),
        (X, y),
        objective=OBJ,
        estimator=nd.RBP(),
        optimizer=optax.sgd(1e-3),
        epochs=1,
        batch_size=16,
        key=jr.PRNGKey(0),
    )
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert "only 0% of the examples' solves converged" in warning
    assert warning.endswith(
        "; a probe of 32 training examples: 0% at dt0 = 1, 100% at dt0 = 0.5, 100% at dt0 = 0.25: the Euler "
        "step overshoots equilibria that training made stiffer (stable only for dt0 < 2/|lambda| of dF/dr): "
        "pass dt0=0.5 (--dt0 0.5 on an experiment's command line)"
    )


def test_fit_adapt_dt0_continues_with_the_step_the_probe_finds(monkeypatch, capsys, tmp_path):
    # The overshooting CTRNN of the probe's test (converges at dt0 0.5, not at 1), the
    # falling-rate rule forced: epoch 1 fails at dt0 = 1, the probe finds 0.5, epochs 2 and 3
    # train at 0.5 (the probe at 0.5 then finds nothing to change). A run killed after epoch
    # 2 resumes at 0.5 and ends where the uninterrupted run ends.
    monkeypatch.setattr(nd.training, "_converged_rate_fell", lambda history: True)
    X = 0.1 * jr.normal(jr.PRNGKey(1), (32, 3), jnp.float64)
    y = (X[:, 0] > 0).astype(int)

    def run(epochs, run=None, **kwargs):
        return nd.training.fit(
            _ctrnn_with(-2.0 * jnp.eye(6)),
            (X, y),
            objective=OBJ,
            estimator=nd.RBP(),
            optimizer=optax.sgd(1e-3),
            epochs=epochs,
            batch_size=16,
            key=jr.PRNGKey(0),
            run=run,
            **kwargs,
        )

    net, history = run(3, adapt_dt0=True)
    assert [r["dt0"] for r in history] == [1.0, 0.5, 0.5]
    assert [r["converged_rate"] for r in history] == [0.0, 1.0, 1.0]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings[0].endswith("training continues with dt0=0.5 from the next epoch (adapt_dt0)")
    assert "converge at dt0 = 0.5" in warnings[1]
    # Resume: the step is in the checkpoint.
    run(2, nd.runs.RunDir(tmp_path), adapt_dt0=True)
    resumed, again = run(3, nd.runs.RunDir(tmp_path), adapt_dt0=True)
    assert [r["dt0"] for r in again] == [1.0, 0.5, 0.5]
    assert bool(eqx.tree_equal(resumed, net))
    # A run made without adapting is another run's numbers.
    with pytest.raises(nd.runs.StaleRunError):
        run(3, nd.runs.RunDir(tmp_path))
    # A Trajectory's dt0 is its discretisation: refused.
    with pytest.raises(ValueError, match="adapt_dt0=True needs a SteadyState objective"):
        nd.training.fit(
            _ctrnn_with(-2.0 * jnp.eye(6)),
            (X[:, None, :].repeat(2, 1), jnp.zeros((32, 2, 2))),
            objective=nd.Trajectory(nd.losses.squared_error, ts=(1.0, 2.0)),
            estimator=nd.BPTT(),
            optimizer=optax.sgd(1e-3),
            epochs=1,
            batch_size=16,
            key=jr.PRNGKey(0),
            adapt_dt0=True,
        )


def test_a_diagnosis_may_change_the_state_and_the_checkpoint_keeps_it(tmp_path):
    # fit(adapt_dt0=True)'s mechanism: the diagnosis returns (sentence, state); the new state
    # is what the next unit gets and what the checkpoint holds, also with progress off.
    seen = []

    def advance(state, i):
        seen.append(float(state[1]))
        return (state[0] + 1.0, state[1]), dict(train_loss=1.0, converged_rate=(1.0, 0.5, 1.0, 1.0)[i])

    def diagnose(state):
        return "halved", (state[0], state[1] / 2)

    state = (jnp.zeros(()), jnp.ones(()))
    nd.training.train_loop(advance, state, 2, run=nd.runs.RunDir(tmp_path), diagnose=diagnose, progress=False)
    assert seen == [1.0, 1.0]
    final, history = nd.training.train_loop(
        advance, state, 4, run=nd.runs.RunDir(tmp_path), diagnose=diagnose, progress=False
    )
    assert seen == [1.0, 1.0, 0.5, 0.5]  # resumed from the checkpoint with the halved value
    assert float(final[0]) == 4.0 and float(final[1]) == 0.5 and len(history) == 4
