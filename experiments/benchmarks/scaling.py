"""Scaling out: data-parallel training and a sharded sweep on 1, 2 and 4 devices of one
process, and on 2 processes x 2 devices (`jax.distributed`, gloo collectives on CPU).

Each layout runs in its own subprocess(es) (`XLA_FLAGS=--xla_force_host_platform_device_count=N`:
the device count is fixed when JAX starts), so it measures what a user launching that layout
gets:

- training: `nd.training.fit` on the double moon (RBP gradients of each mini-batch from
  `nd.batch_value_and_grad`, SGD with momentum), the batch sharded over every device;
  examples per second, the median epoch after the first (which compiles);
- sweep: `nd.sweeps.run` of `experiments.sweep`'s training run over 256 points (16 seeds x 16
  learning rates; quick: 16 points), the points sharded over every device; median of 3 calls
  after a compiling one.

Rows compare each layout (ours) with one device (peer): ratio = time / one device's time, so
ideal scaling over D devices is 1/D. On a CPU host the forced devices share its cores: the
ratio cannot go below 1/cores (on a 2-core machine, no better than 0.5 however many devices).
The final training loss and the sweep's results of every layout are checked against one
device's (equal up to float reduction order; the sweep's results per point exactly).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from ._timing import row


REPO = pathlib.Path(__file__).resolve().parents[2]
LAYOUTS = [(1, 1), (1, 2), (1, 4), (2, 2)]  # (processes, devices per process)


def _sizes(quick: bool, large: bool) -> dict:
    if quick:
        return dict(n=512, hidden=16, batch=32, epochs=3, seeds=4, rates=4, steps=10)
    if large:
        return dict(n=8192, hidden=256, batch=256, epochs=5, seeds=16, rates=16, steps=100)
    return dict(n=2048, hidden=64, batch=64, epochs=5, seeds=16, rates=16, steps=50)


def _worker(sizes: dict) -> dict:
    """Runs in the subprocess: times training and the sweep on every device of the job."""
    import jax
    import jax.random as jr

    import neurodyn as nd
    from experiments.sweep import Config, make_problem

    from ._timing import time_fn

    out = dict(devices=len(jax.devices()), processes=jax.process_count())
    # training
    X, y = nd.data.double_moon(jr.PRNGKey(0), sizes["n"], distance=-1.0)
    X = (X - X.mean(0)[None]) / X.std(0)[None]
    net = nd.networks.Layered((2, sizes["hidden"], sizes["hidden"], 2), nd.activations.tanh, key=jr.PRNGKey(1))
    net, history = nd.training.fit(
        net,
        (X, nd.training.one_hot_targets(y, 2)),
        objective=nd.SteadyState(nd.losses.squared_error),
        estimator=nd.RBP(),
        optimizer=nd.config.optimizer("sgd", 0.02, momentum=0.9),
        epochs=sizes["epochs"],
        batch_size=sizes["batch"],
        key=jr.PRNGKey(2),
        progress=False,
        devices="all" if len(jax.devices()) > 1 else None,
    )
    seconds = [r["seconds"] for r in history[1:]]
    out["epoch_s"] = float(np.median(seconds))
    out["examples_per_epoch"] = len(X) // sizes["batch"] * sizes["batch"]
    out["train_loss"] = history[-1]["train_loss"]
    # sweep
    cfg = Config(n_data=512, steps=sizes["steps"], batch_size=32)
    fn = make_problem(cfg, 16, nd.RBP())
    points = nd.sweeps.product(seed=list(range(sizes["seeds"])), learning_rate=np.geomspace(0.003, 0.1, sizes["rates"]))
    result = {}

    def call():
        result.update(nd.sweeps.run(fn, points))
        return result["final_loss"]

    out["sweep_s"], out["sweep_compile_s"] = time_fn(call, repeats=3)
    out["points"] = nd.sweeps.n_points(points)
    out["sweep_final_loss"] = np.asarray(result["final_loss"]).tolist()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, devices: int, sizes: dict, timeout: float = 1200) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    port = _free_port()
    cmd = [sys.executable, "-m", "experiments.benchmarks.scaling", "--worker", json.dumps(sizes)]
    procs = []
    for i in range(processes):
        launch = [] if processes == 1 else [f"127.0.0.1:{port}", str(processes), str(i)]
        procs.append(
            subprocess.Popen(cmd + launch, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        if p.returncode != 0:
            raise RuntimeError(f"scaling worker ({processes}x{devices}) exited {p.returncode}: {stderr[-2000:]}")
        outs.append(stdout)
    line = [s for s in outs[0].splitlines() if s.startswith("SCALING ")][-1]
    return json.loads(line[len("SCALING ") :])


def run(quick: bool = False, large: bool = False):
    sizes = _sizes(quick, large)
    cores = os.cpu_count() or 1
    results = {}
    for layout in LAYOUTS:
        results[layout] = _launch(*layout, sizes)
        results[layout]["load_average"] = os.getloadavg()[0]  # other work on the machine during the run
    base = results[(1, 1)]
    rows = []
    for (procs, devs), r in results.items():
        name = f"{procs} process x {devs} devices" if procs == 1 else f"{procs} processes x {devs} devices"
        D = procs * devs
        bound = f"<= {max(1 / D, 1 / cores):.2f} ({cores} cores)"
        same = np.allclose(r["sweep_final_loss"], base["sweep_final_loss"], rtol=1e-4, atol=1e-6)
        rows.append(
            row(
                "scaling",
                f"fit, double moon, Layered (2,{sizes['hidden']},{sizes['hidden']},2), B={sizes['batch']}",
                name,
                "1 device",
                r["epoch_s"],
                base["epoch_s"],
                bound,
                examples_per_s=r["examples_per_epoch"] / r["epoch_s"],
                train_loss=r["train_loss"],
                loss_diff=abs(r["train_loss"] - base["train_loss"]),
                devices=D,
                load_average=r["load_average"],
            )
        )
        rows.append(
            row(
                "scaling",
                f"sweep, {r['points']} points x {sizes['steps']} steps (experiments.sweep)",
                name,
                "1 device",
                r["sweep_s"],
                base["sweep_s"],
                bound,
                points_per_s=r["points"] / r["sweep_s"],
                compile_s=r["sweep_compile_s"],
                same_results=bool(same),
                devices=D,
                load_average=r["load_average"],
            )
        )
    return rows


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--worker":
    if len(sys.argv) == 6:
        import jax

        jax.distributed.initialize(
            coordinator_address=sys.argv[3],
            num_processes=int(sys.argv[4]),
            process_id=int(sys.argv[5]),
            heartbeat_timeout_seconds=30,
        )
    result = _worker(json.loads(sys.argv[2]))
    import jax

    if jax.process_index() == 0:
        print("SCALING " + json.dumps(result), flush=True)
