"""Data-parallel training and multi-process launches on JAX's own distributed runtime.

Devices are forced CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`) in
subprocesses: this test process has initialised JAX with one device already. The two-process
tests start two real processes on 127.0.0.1 (`jax.distributed`, gloo collectives on CPU).
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from neurodyn import config as ndc


REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# fit(devices=...) in this process (one device) and the launch options' parsing
# ---------------------------------------------------------------------------------------


def _problem(n=64):
    X, y = nd.data.double_moon(jr.PRNGKey(0), n, distance=-1.0)
    X = (X - X.mean(0)[None]) / X.std(0)[None]
    net = nd.networks.Layered((2, 8, 2), nd.activations.tanh, key=jr.PRNGKey(1))
    kw = dict(
        objective=nd.SteadyState(nd.losses.squared_error),
        estimator=nd.RBP(),
        optimizer=nd.config.optimizer("sgd", 0.05, momentum=0.9),
        epochs=2,
        key=jr.PRNGKey(2),
        progress=False,
    )
    return net, (X, nd.training.one_hot_targets(y, 2)), kw


def test_fit_devices_on_one_device_is_the_single_device_path():
    net, train, kw = _problem()
    a, ha = nd.training.fit(net, train, batch_size=16, **kw)
    b, hb = nd.training.fit(net, train, batch_size=16, devices="all", **kw)
    c, hc = nd.training.fit(net, train, batch_size=16, devices=jax.devices(), **kw)
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    assert ha[-1]["train_loss"] == hb[-1]["train_loss"] == hc[-1]["train_loss"]
    with pytest.raises(ValueError, match="give None, 'all' or a list"):
        nd.training.fit(net, train, batch_size=16, devices="gpu", **kw)
    with pytest.raises(ValueError, match="at least one device"):
        nd.training.fit(net, train, batch_size=16, devices=[], **kw)


def test_launch_options_are_parsed():
    known, rest = ndc._split_cli(
        [
            "--config",
            "c.yaml",
            "--distributed",
            "--coordinator-address",
            "127.0.0.1:1234",
            "--num-processes=2",
            "--process-id",
            "1",
            "--heartbeat-timeout",
            "10",
            "--steps",
            "3",
        ]
    )
    assert known["distributed"] is True and rest == ["--steps", "3"]
    assert known["launch"] == dict(
        coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1, heartbeat_timeout=10
    )
    assert ndc._split_cli(["--distributed", "false", "--x", "1"])[0]["distributed"] is False
    assert ndc._split_cli(["--process-id", "0"])[0]["distributed"] is True  # an option implies --distributed
    assert ndc._split_cli(["--quick"])[0]["distributed"] is False
    for bad, match in (
        (["--coordinator-address", "localhost"], "HOST:PORT"),
        (["--num-processes", "two"], "integer"),
        (["--num-processes", "0"], ">= 1"),
        (["--process-id", "-1"], ">= 0"),
        (["--process-id"], "needs a value"),
    ):
        with pytest.raises(ndc.ConfigError, match=match):
            ndc._split_cli(bad)


def test_distributed_without_a_cluster_is_one_line(tmp_path):
    # No coordinator address and no SLURM: one line and exit code 2, before any work.
    env = {k: v for k, v in _env(1).items() if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config",
            "configs/sweep_double_moon.yaml",
            "--quick",
            "--out",
            str(tmp_path / "run"),
            "--distributed",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --distributed (from the environment)"), proc.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------
# (a) data parallel over 4 forced CPU devices equals one device
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_device_fit_equals_one_device():
    script = textwrap.dedent(
        """
        import sys
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.random as jr, numpy as np
        import neurodyn as nd
        assert len(jax.devices()) == 4, jax.devices()
        X, y = nd.data.double_moon(jr.PRNGKey(0), 200, distance=-1.0)
        X = (X - X.mean(0)) / X.std(0)
        Y = nd.training.one_hot_targets(y, 2)
        net = nd.networks.Layered((2, 8, 2), nd.activations.tanh, key=jr.PRNGKey(1))
        # The third: Backoff's warm start, whose level follows the all-reduced mean step.
        backoff = dict(relaxation=nd.relaxation.Backoff())
        for est, extra in ((nd.RBP(), {}), (nd.EP(0.05, variant="centered"), {}), (nd.RBP(), backoff)):
            kw = dict(objective=nd.SteadyState(nd.losses.squared_error), estimator=est, epochs=2, batch_size=32,
                      optimizer=nd.config.optimizer("sgd", 0.05, momentum=0.9), key=jr.PRNGKey(2), valid=(X, y),
                      progress=False, **extra)
            many, hm = nd.training.fit(net, (X, Y), **kw)  # default: all 4 devices (32 divides over 4)
            one, h1 = nd.training.fit(net, (X, Y), devices=jax.devices()[:1], **kw)
            for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose([r["train_loss"] for r in hm], [r["train_loss"] for r in h1], rtol=1e-10)
            if extra:
                assert [r["start_dt"] for r in hm] == [r["start_dt"] for r in h1], (hm, h1)
            assert [r["valid_accuracy"] for r in hm] == [r["valid_accuracy"] for r in h1]
        # float32: the same up to the order of the float sums
        jax.config.update("jax_enable_x64", False)
        X32, Y32, net32 = np.asarray(X, np.float32), np.asarray(Y, np.float32), nd.networks.Layered(
            (2, 8, 2), nd.activations.tanh, key=jr.PRNGKey(1))
        kw = dict(objective=nd.SteadyState(nd.losses.squared_error), estimator=nd.RBP(), epochs=2, batch_size=32,
                  optimizer=nd.config.optimizer("sgd", 0.05, momentum=0.9), key=jr.PRNGKey(2), progress=False)
        many, _ = nd.training.fit(net32, (X32, Y32), devices="all", **kw)
        one, _ = nd.training.fit(net32, (X32, Y32), devices=jax.devices()[:1], **kw)
        for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        # a batch that does not divide over 4 devices: one device with a note; asked for: an error
        nd.training.fit(net32, (X32, Y32), **dict(kw, batch_size=30, progress=True))
        try:
            nd.training.fit(net32, (X32, Y32), devices="all", **dict(kw, batch_size=30))
        except ValueError as e:
            print("ERROR", e)
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(4), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout
    assert "ERROR devices: batch_size 30 does not divide over 4 devices" in proc.stdout
    assert "note: fit: batch_size 30 does not divide over the 4 devices: training on one device" in proc.stderr


# ---------------------------------------------------------------------------------------
# (b) two real processes (2 CPU devices each) on 127.0.0.1
# ---------------------------------------------------------------------------------------

TRAIN_CONFIG = """\
experiment: train
data: {name: double_moon, n: 400, preprocessing: standardize}
network: {kind: layered, sizes: [8], activation: relu}
loss: softmax_cross_entropy
estimators:
  rbp: {kind: RBP}
optimizer: {name: sgd, learning_rate: 0.05, momentum: 0.9}
epochs: 3
batch_size: 32
seeds: [0]
"""


def _start(module, args, out: pathlib.Path, *, processes=2, devices=2, port=None, log=None):
    """Starts `python -m module args --out out` as `processes` processes of one job (or one
    plain process when `processes` is 0); returns the Popen objects and their log files."""
    log = log or out.parent / f"{out.name}-log"
    log.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    procs = []
    for i in range(max(processes, 1)):
        launch = (
            []
            if not processes
            else [
                "--coordinator-address",
                f"127.0.0.1:{port}",
                "--num-processes",
                str(processes),
                "--process-id",
                str(i),
                "--heartbeat-timeout",
                "10",
            ]
        )
        with open(log / f"{i}.err", "w") as err, open(log / f"{i}.out", "w") as outf:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, *args, "--out", str(out), *launch],
                    cwd=REPO,
                    env=_env(devices),
                    stdout=outf,
                    stderr=err,
                )
            )
    return procs, log


def _wait(procs, log, timeout=600):
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"timed out; stderr: {(log / '0.err').read_text()[-2000:]}")
    for i, code in enumerate(codes):
        assert code == 0, f"process {i} exited {code}: {(log / f'{i}.err').read_text()[-3000:]}"


def _arrays(path: pathlib.Path) -> list[np.ndarray]:
    """The arrays of an `eqx.tree_serialise_leaves` file (one `np.save` per leaf)."""
    out = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            out.append(np.load(f))
    return out


def _checkpoint(run: pathlib.Path) -> list[np.ndarray]:
    import json

    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    return _arrays(run / "checkpoints" / meta["file"])


@pytest.mark.slow
def test_two_processes_sweep_and_training_equal_one_process(tmp_path):
    sweep = [
        "--config",
        "configs/sweep_double_moon.yaml",
        "--quick",
        "--steps",
        "10",
        "--sweep.seed",
        "[0, 1]",
        "--sweep.learning_rate",
        "[0.03, 0.1]",
    ]
    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN_CONFIG)
    train = ["--config", str(cfg)]
    # the sweep: 2 processes x 2 devices against one process with 4 devices (the same layout)
    procs, log = _start("experiments.sweep", sweep, tmp_path / "sweep2")
    _wait(procs, log)
    pid0 = procs[0].pid
    procs, log = _start("experiments.sweep", sweep, tmp_path / "sweep1", processes=0, devices=4)
    _wait(procs, log)
    two, one = (tmp_path / "sweep2" / "summary.csv").read_text(), (tmp_path / "sweep1" / "summary.csv").read_text()
    assert two == one and len(two.splitlines()) == 5  # header + 4 points, exactly equal
    assert "4 sweep points on 4 device(s)" in (tmp_path / "sweep2-log" / "1.out").read_text()
    # process 0 took the directory's lock (its PID is inside); process 1 neither locked nor failed
    assert (tmp_path / "sweep2" / ".lock").read_text().strip() == str(pid0)

    # training: 2 processes x 2 devices (each batch of 32 sharded 8 per device) against 1 device
    procs, log = _start("experiments.train", train, tmp_path / "train2")
    _wait(procs, log)
    assert "data parallel over 4 devices (2 process(es))" in (log / "0.err").read_text()
    assert "epoch 3/3" not in (log / "1.err").read_text()  # progress from process 0 only
    procs, log = _start("experiments.train", train, tmp_path / "train1", processes=0, devices=1)
    _wait(procs, log)
    a, b = _checkpoint(tmp_path / "train2" / "rbp-seed0"), _checkpoint(tmp_path / "train1" / "rbp-seed0")
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)  # float32: the order of the sums differs


@pytest.mark.slow
def test_killed_process_ends_the_other_and_a_rerun_resumes(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(TRAIN_CONFIG)
    args = ["--config", str(cfg), "--epochs", "40"]
    out = tmp_path / "run"
    procs, log = _start("experiments.train", args, out)
    meta = out / "rbp-seed0" / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while not meta.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (log / "0.err").read_text()[-2000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    t0 = time.monotonic()
    try:
        code = procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        raise AssertionError("process 0 went on for 60 s after process 1 was killed")
    assert code != 0 and time.monotonic() - t0 < 60
    err = (log / "0.err").read_text().strip().splitlines()
    assert "another process of this job died or stopped responding" in err[-1], err[-10:]
    assert not any("Check failure stack trace" in line or line.startswith("    @ ") for line in err), err[-20:]

    # the same command again: both processes resume from the last checkpoint and finish
    procs, log = _start("experiments.train", args, out, log=tmp_path / "rerun-log")
    _wait(procs, log)
    text = (log / "0.err").read_text()
    assert "resuming after epoch" in text, text[-2000:]
    assert "epoch 40/40" in text
    # and the numbers are the uninterrupted run's (one process, one device)
    procs, log = _start("experiments.train", args, tmp_path / "straight", processes=0, devices=1)
    _wait(procs, log)
    for x, y in zip(_checkpoint(out / "rbp-seed0"), _checkpoint(tmp_path / "straight" / "rbp-seed0")):
        np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-5)


@pytest.mark.slow
def test_global_array_data_and_a_process_that_sees_another_run_directory(tmp_path):
    # Every process resumes from process 0's checkpoint; a process whose view of the run
    # directory differs (a node-local path) stops with one line instead of training on from
    # another epoch.
    script = textwrap.dedent(
        """
        import sys
        import jax
        i, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i,
                                   heartbeat_timeout_seconds=10)
        import jax.random as jr, numpy as np
        import neurodyn as nd
        import neurodyn.distributed
        X, y = nd.data.double_moon(jr.PRNGKey(0), 64, distance=-1.0)
        net = nd.networks.Layered((2, 4, 2), nd.activations.tanh, key=jr.PRNGKey(1))
        kw = dict(objective=nd.SteadyState(nd.losses.squared_error), estimator=nd.RBP(), batch_size=16,
                  optimizer=nd.config.optimizer("sgd", 0.05), key=jr.PRNGKey(2), progress=False)
        train = (np.asarray(X), np.asarray(nd.training.one_hot_targets(y, 2)))
        # a data set each process loads only its rows of (a global array): the same training
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        rows = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
        Xg, Yg = [nd.distributed.global_array(lambda index, a=a: a[index], rows, shape=a.shape) for a in train]
        assert not Xg.is_fully_addressable
        a, ha = nd.training.fit(net, (Xg, Yg), epochs=2, run=nd.runs.RunDir(f"{root}/global"), **kw)
        b, hb = nd.training.fit(net, train, epochs=2, **kw)
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)
        c, hc = nd.training.fit(net, (Xg, Yg), epochs=2, run=nd.runs.RunDir(f"{root}/global"), **kw)  # resumes
        drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # timings are each process's
        assert drop(hc) == drop(ha), (hc, ha)
        print("GLOBAL OK", flush=True)
        nd.training.fit(net, train, epochs=1, run=nd.runs.RunDir(f"{root}/shared"), **kw)
        try:
            nd.training.fit(net, train, epochs=2, run=nd.runs.RunDir(f"{root}/shared" if i == 0 else f"{root}/local"), **kw)
        except nd.runs.RunDirError as e:
            print("REFUSED", e, flush=True)
            import os; os._exit(2)
        """
    )
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), str(port), str(tmp_path)],
            env=_env(2),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert procs[1].returncode == 2, outs[1][1][-2000:]
    assert "GLOBAL OK" in outs[0][0] and "GLOBAL OK" in outs[1][0]
    assert (
        f"REFUSED process 1 finds {tmp_path}/local at epoch 0, process 0 at epoch 1: the run directory must be on a "
        "file system every process sees" in outs[1][0]
    )
    assert procs[0].returncode != 0  # it cannot go on alone
