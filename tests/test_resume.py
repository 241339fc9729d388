"""Nothing is lost: kill a run for real (SIGKILL) and re-run the same command."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cmd(out, *extra):
    return [sys.executable, "-m", "experiments.train", "--config", "configs/double_moon.yaml", "--quick",
            "--out", str(out), "--epochs", "8", "--data.n", "2000", *extra]


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
    cmd = [sys.executable, "-m", "experiments.sweep", "--config", "configs/sweep_double_moon.yaml", "--quick", "--out", str(tmp_path)]
    first = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    second = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert "not recomputed" in second.stderr and "not recomputed" not in first.stderr
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]


@pytest.mark.slow
def test_killed_sweep_resumes_and_keeps_finished_points(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cmd(out):
        # One point per chunk, long enough per chunk to kill the run between chunks.
        return [sys.executable, "-m", "experiments.sweep", "--config", "configs/sweep_double_moon.yaml", "--quick",
                "--out", str(out), "--chunk", "1", "--steps", "1500"]

    reference = tmp_path / "reference"
    subprocess.run(cmd(reference), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "done-rbp-hidden16-points0-1"
    deadline = time.time() + 300
    while time.time() < deadline and not first.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in (killed / "checkpoints").glob("done-*"))
    assert first.exists() and len(finished) < 4 and not (killed / "summary.csv").exists(), "killed mid-way"
    saved = {name: (killed / "checkpoints" / name).stat().st_mtime_ns for name in finished}
    rerun = subprocess.run(cmd(killed), cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    assert rerun.stderr.count("not recomputed") == len(finished)
    assert all((killed / "checkpoints" / n).stat().st_mtime_ns == t for n, t in saved.items())  # untouched
    a, b = _summary(reference), _summary(killed)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        assert ra == rb
