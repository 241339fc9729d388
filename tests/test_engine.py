"""The training engine: one train step on the batch gradient, one loop with checkpoints and
resume (nd.training.make_train_step, nd.training.train_loop), per-example step weights,
TensorBoard."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import neurodyn as nd
from helpers import DyingRun as _DyingRun, Killed as _Killed
from neurodyn.runs import RunDir


def _sequences(B=3, T=5):
    net = nd.networks.CTRNN(4, 2, 2, key=jr.PRNGKey(0))
    xs = jr.normal(jr.PRNGKey(1), (B, T, 2))
    ys = jr.normal(jr.PRNGKey(2), (B, T, 2))
    w = (jr.uniform(jr.PRNGKey(3), (B, T)) > 0.4).astype(xs.dtype).at[:, -1].set(1.0)
    return net, xs, ys, w


@pytest.mark.slow  # 8-14 s each: the two gradient paths compile
@pytest.mark.parametrize("estimator", [nd.BPTT(), nd.BPTT(truncation=2), nd.RTRL()], ids=["bptt", "tbptt", "rtrl"])
def test_per_example_step_weights_are_the_mean_of_the_per_example_trajectories(estimator):
    net, xs, ys, w = _sequences()
    ts = np.arange(1, xs.shape[1] + 1)
    objective = nd.Trajectory(nd.losses.squared_error, ts)
    loss, grads, info = nd.batch_value_and_grad(net, xs, ys, objective=objective, estimator=estimator, weights=w)

    def one(x, y, wk):
        return nd.value_and_grad(
            net, x, y, objective=nd.Trajectory(nd.losses.squared_error, ts, wk), estimator=estimator
        )[:2]

    losses, per = jax.vmap(one)(xs, ys, w)
    assert float(loss) == pytest.approx(float(jnp.mean(losses)), rel=1e-10)
    assert eqx.tree_equal(grads, nd.batch_mean(per), rtol=1e-9, atol=1e-12)
    assert bool(jnp.all(info["converged"]))
    with pytest.raises(ValueError, match="one per example and time"):
        nd.batch_value_and_grad(net, xs, ys, objective=objective, estimator=estimator, weights=w[:, :-1])
    # An example whose step weights are all zero is masked: NaN data there does not enter.
    w0 = w.at[0].set(0.0)
    xs_nan = xs.at[0].set(jnp.nan)
    loss0, grads0, _ = nd.batch_value_and_grad(net, xs_nan, ys, objective=objective, estimator=estimator, weights=w0)
    losses0, per0 = jax.vmap(one)(xs[1:], ys[1:], w[1:])
    assert float(loss0) == pytest.approx(float(jnp.sum(losses0)) / xs.shape[0], rel=1e-10)
    assert eqx.tree_equal(grads0, jax.tree.map(lambda g: jnp.sum(g, 0) / xs.shape[0], per0), rtol=1e-9, atol=1e-12)


def test_the_train_step_is_one_optimiser_update_of_the_batch_gradient_plus_l2():
    X, y = nd.data.double_moon(jr.PRNGKey(0), 8, distance=-1.0)
    net = nd.networks.Layered((2, 3, 2), nd.activations.relu, key=jr.PRNGKey(0))
    objective, opt, l2 = nd.SteadyState(nd.losses.softmax_cross_entropy), optax.sgd(0.1), 0.01
    step = nd.training.make_train_step(objective, nd.RBP(), opt, l2=l2)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    new, _, loss, info = eqx.filter_jit(step)(params, step.init(params), static, X, y)
    ref_loss, g, _ = nd.batch_value_and_grad(net, X, y, objective=objective, estimator=nd.RBP())
    expected = jax.tree.map(lambda p, gi: p - 0.1 * (gi + l2 * p), params, g)
    assert eqx.tree_equal(new, expected, rtol=1e-6, atol=1e-7)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6) and float(info["converged_rate"]) == 1.0
    assert step == nd.training.make_train_step(objective, nd.RBP(), opt, l2=l2)  # equal settings: one compilation


def _advance(state, i):
    # A toy "training": the data of unit i derives from i alone.
    x = state["x"] * 0.5 + jr.normal(jr.fold_in(jr.PRNGKey(0), i), (3,))
    return dict(x=x), dict(epoch=10 * (i + 1), train_loss=float(jnp.sum(x**2)))


def test_the_loop_resumes_an_interrupted_run_to_the_uninterrupted_result(tmp_path, capsys):
    state0 = dict(x=jnp.zeros(3))
    kw = dict(unit="step", total=40, interval="10 steps", steps=10, log_extra=dict(seed=0), tag="toy")
    ref, ref_history = nd.training.train_loop(_advance, state0, 4, **dict(kw, progress=False))
    with pytest.raises(_Killed):
        nd.training.train_loop(_advance, state0, 4, run=_DyingRun(tmp_path, after=2), **kw)
    out, history = nd.training.train_loop(_advance, state0, 4, run=RunDir(tmp_path), **kw)
    assert eqx.tree_equal(out, ref) and history == [dict(r, seconds=h["seconds"]) for r, h in zip(ref_history, history)]
    assert [r["epoch"] for r in RunDir(tmp_path).rows()] == [10, 20, 30, 40] and history[-1]["stopped"] == "steps"
    err = capsys.readouterr().err
    assert "resuming after step 20/40" in err and "[toy] step 30/40  loss" in err and "steps/s (" in err
    assert "s/10 steps)" in err
    # Finished: returned as it is; more units continue it.
    again, h2 = nd.training.train_loop(_advance, state0, 4, run=RunDir(tmp_path), **kw)
    assert h2 == history and "finished already" in capsys.readouterr().err
    longer, h3 = nd.training.train_loop(_advance, state0, 5, run=RunDir(tmp_path), **dict(kw, total=50))
    assert [r["epoch"] for r in h3] == [10, 20, 30, 40, 50] and "stopped" not in h3[3]


def test_a_non_finite_unit_raises_naming_the_unit(tmp_path):
    def advance(state, i):
        return dict(x=state["x"] + (jnp.nan if i == 1 else 1.0)), dict(epoch=5 * (i + 1), train_loss=1.0)

    with pytest.raises(nd.training.NonFiniteError, match=r"^step 10/20: the parameters became non-finite.*step 5\)"):
        nd.training.train_loop(advance, dict(x=jnp.zeros(2)), 4, run=RunDir(tmp_path), unit="step", total=20)


def test_tensorboard_writes_event_files_next_to_the_metrics(tmp_path):
    pytest.importorskip("tensorboardX")
    nd.training.train_loop(_advance, dict(x=jnp.zeros(3)), 2, run=RunDir(tmp_path), progress=False, tensorboard=True)
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events and (tmp_path / "metrics.jsonl").exists()
    steps = {}
    for event in _events(events[0]):
        for value in event.summary.value:
            steps.setdefault(value.tag, []).append(event.step)
    assert steps["train_loss"] == [10, 20] and "seconds" in steps


def _events(path):
    """The events of a TensorBoard event file (TFRecords: length, its CRC, the data, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data = path.read_bytes()
    while data:
        (n,) = struct.unpack("<Q", data[:8])
        event = Event()
        event.ParseFromString(data[12 : 12 + n])
        yield event
        data = data[12 + n + 4 :]


def test_tensorboard_without_tensorboardx_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # an import of it fails
    with pytest.raises(nd.config.ConfigError, match=r'pip install -e "\.\[tb\]"') as e:
        nd.training.train_loop(_advance, dict(x=jnp.zeros(3)), 2, run=RunDir(tmp_path), tensorboard=True)
    assert "\n" not in str(e.value)


class _KillAfter:
    """Patches RunDir.save_checkpoint: the process "dies" right after the `after`-th checkpoint
    of the first sub-run it writes."""

    def __init__(self, monkeypatch, after):
        original, self.seen = RunDir.save_checkpoint, []

        def save(run, tree, meta, name="last"):
            original(run, tree, meta, name)
            self.seen.append(run.path)
            if run.path == self.seen[0] and meta["step"] == after:
                raise _Killed

        monkeypatch.setattr(RunDir, "save_checkpoint", save)


def _summary(path):
    import csv

    with open(path / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # two experiments, each run three times (~25 s)
@pytest.mark.parametrize(
    "module, argv",
    [
        ("online_rtrl", ["--stream_length", "60", "--checkpoint_every", "20", "--window", "10"]),
        ("sequence_task", ["--steps", "30", "--log_every", "10", "--estimators", "{bptt: {kind: BPTT}}"]),
    ],
)
def test_an_interrupted_experiment_resumes_mid_run_to_the_same_summary(tmp_path, monkeypatch, module, argv):
    import importlib

    main = importlib.import_module(f"experiments.{module}").main
    config = {"online_rtrl": "configs/online_rtrl.yaml", "sequence_task": "configs/copy_task.yaml"}[module]
    base = ["--config", str(pathlib.Path(__file__).parents[1] / config), "--quick", *argv]
    main([*base, "--out", str(tmp_path / "reference")])
    with monkeypatch.context() as m:
        _KillAfter(m, after=2)
        with pytest.raises(_Killed):
            main([*base, "--out", str(tmp_path / "killed")])
    first = next(
        p for p in sorted((tmp_path / "killed").iterdir()) if (p / "checkpoints").is_dir() and p.name != "checkpoints"
    )
    assert json.loads((first / "checkpoints" / "last.json").read_text())["step"] == 2  # killed mid-run
    main([*base, "--out", str(tmp_path / "killed")])
    a, b = _summary(tmp_path / "reference"), _summary(tmp_path / "killed")
    drop = {"step_seconds"}  # wall time differs between runs
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]
