"""Nothing is lost: kill a run for real (SIGKILL) and re-run the same command; damage its
files (truncate, zero, flip bytes) and re-run: it resumes from an intact checkpoint to the
same result, or stops with one line naming the file."""

import csv
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest

import neurodyn as nd
from neurodyn.preprocessing import Preprocessor
from neurodyn.runs import DamagedFileError, RunDir


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cmd(out, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "configs/double_moon.yaml",
        "--quick",
        "--out",
        str(out),
        "--epochs",
        "8",
        "--data.n",
        "2000",
        *extra,
    ]


def _step(meta):
    try:
        return json.loads(meta.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _summary(out):
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_result(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    reference = tmp_path / "reference"
    subprocess.run(_cmd(reference), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = killed / "bptt-seed0" / "checkpoints" / "last.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _step(meta) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Killed after bptt's 2nd epoch: bptt resumes from a checkpoint, rbp starts afresh.
    assert _step(meta) >= 2 and not (killed / "summary.csv").exists(), "the run must be killed mid-way"
    subprocess.run(_cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    a, b = _summary(reference), _summary(killed)
    assert [r["estimator"] for r in a] == [r["estimator"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["epochs"] == rb["epochs"] == "8" and ra["best_epoch"] == rb["best_epoch"]
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-6)
        assert float(ra["test_accuracy"]) == pytest.approx(float(rb["test_accuracy"]), abs=1e-9)


@pytest.mark.slow
def test_finished_sweep_points_are_not_recomputed(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--config",
        "configs/sweep_double_moon.yaml",
        "--quick",
        "--out",
        str(tmp_path),
    ]
    first = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    second = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert "not recomputed" in second.stderr and "not recomputed" not in first.stderr
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]


@pytest.mark.slow
def test_killed_sweep_resumes_and_keeps_finished_points(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cmd(out):
        # One point per chunk, long enough per chunk to kill the run between chunks.
        return [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config",
            "configs/sweep_double_moon.yaml",
            "--quick",
            "--out",
            str(out),
            "--chunk",
            "1",
            "--steps",
            "1500",
        ]

    reference = tmp_path / "reference"
    subprocess.run(cmd(reference), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    n_points = len(_summary(reference))  # the quick sweep's points (seeds x learning rates)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "done-rbp-hidden16-points0-1"
    deadline = time.time() + 300
    while time.time() < deadline and not first.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (killed / "checkpoints").glob("done-*"))
    assert first.exists() and len(finished) < n_points and not (killed / "summary.csv").exists(), "killed mid-way"
    saved = {name: (killed / "checkpoints" / name).stat().st_mtime_ns for name in finished}
    rerun = subprocess.run(cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert rerun.stderr.count("not recomputed") == len(finished)
    assert all((killed / "checkpoints" / n).stat().st_mtime_ns == t for n, t in saved.items())  # untouched
    a, b = _summary(reference), _summary(killed)
    assert len(a) == len(b) == n_points >= 4
    for ra, rb in zip(a, b):
        assert ra == rb


# ---------------------------------------------------------------------------------------
# Fault injection on fit's checkpoints (fast: a 2-4-2 network on 32 points, one compilation).
# ---------------------------------------------------------------------------------------

_OPT = optax.sgd(0.05, momentum=0.9)  # one object: every fit below shares one compiled epoch


def _fit(epochs, run=None):
    X, y = nd.data.double_moon(jr.PRNGKey(0), 32, distance=-1.0)
    X = jnp.asarray(Preprocessor.fit(X, "standardize")(X), jnp.float64)
    net = nd.networks.Layered((2, 4, 2), nd.activations.relu, key=jr.PRNGKey(9))
    return nd.training.fit(
        net,
        (X, y),
        objective=nd.SteadyState(nd.losses.softmax_cross_entropy),
        estimator=nd.BPTT(),
        optimizer=_OPT,
        epochs=epochs,
        batch_size=8,
        key=jr.PRNGKey(4),
        run=run,
        progress=False,
    )


@functools.cache
def _reference():
    return _fit(4)


def _damage(path, how):
    data = path.read_bytes()
    mid = len(data) // 2
    if how == "truncate":
        data = data[:mid]
    elif how == "zero":
        data = bytes(len(data))
    else:  # 64 flipped bytes
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
    path.write_bytes(data)


def _params(net):
    return eqx.filter(net, eqx.is_inexact_array)


@pytest.mark.parametrize("target", ["weights", "metadata"])
@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
def test_a_damaged_latest_checkpoint_resumes_from_an_intact_one(tmp_path, how, target, capsys):
    ref, ref_history = _reference()
    _fit(3, RunDir(tmp_path))
    ckpt = tmp_path / "checkpoints"
    if target == "weights":
        damaged = [ckpt / "last-3.eqx"]
    else:  # both copies of the newest metadata
        damaged = [ckpt / "last.json", ckpt / "last-3.json"]
    for p in damaged:
        _damage(p, how)
    capsys.readouterr()
    out, history = _fit(4, RunDir(tmp_path))  # one more epoch than the damaged run had
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(p.name in err[0] for p in damaged) and "resuming from" in err[0]
    assert "last-2.json (step 2)" in err[0]
    assert eqx.tree_equal(_params(out), _params(ref), rtol=0, atol=0)  # bit for bit
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in ref_history]
    assert [r["epoch"] for r in RunDir(tmp_path).rows()] == [1, 2, 3, 4]


@pytest.mark.parametrize("how", ["truncate", "zero", "flip"])
def test_no_intact_checkpoint_left_stops_with_one_line_naming_the_file(tmp_path, how):
    _fit(2, RunDir(tmp_path, keep=1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last-2.eqx", "last-2.json", "last.json"]
    _damage(tmp_path / "checkpoints" / "last-2.eqx", how)
    with pytest.raises(DamagedFileError) as e:
        _fit(2, RunDir(tmp_path, keep=1))
    message = str(e.value)
    assert "\n" not in message and "last-2.eqx is damaged" in message
    assert f"delete {tmp_path} or choose another --out" in message
