"""A sweep of 64 training runs (16 seeds x 4 learning rates) as one vmapped computation,
against one run and against a Python loop of the 64 runs, measured in the same process.

Each run trains a `Layered` network `(2, n, 2)` (ReLU hidden units) on the double moon with
RBP gradients and SGD with momentum, then measures its test accuracy: the
`experiments.sweep` problem. Target: the 64-point sweep costs at most 8x one point (CPU at
n = 64; `large=True`, the GPU size, n = 256), where the loop costs about 64x.
Before timing, the sweep's results are checked against the loop's, point by point.
"""

import time

import jax
import numpy as np

import neurodyn as nd
from experiments.sweep import Config, Grid, make_problem, Optimizer, SweepAxes

from ._timing import row, time_fn


def run(quick: bool = False, large: bool = False):
    hidden = 256 if large else (8 if quick else 64)
    seeds = list(range(2 if quick else 16))
    learning_rates = [0.01, 0.03, 0.1, 0.3]
    steps = 5 if quick else 20
    cfg = Config(
        n_data=256, steps=steps, batch_size=16, optimizer=Optimizer("sgd", 0.9),
        sweep=SweepAxes(seed=tuple(seeds), learning_rate=tuple(learning_rates)), grid=Grid(hidden=(hidden,)),
    )
    fn = make_problem(cfg, hidden, nd.RBP())
    many = nd.sweeps.product(seed=seeds, learning_rate=learning_rates)
    P = nd.sweeps.n_points(many)
    points = [{k: v[i : i + 1] for k, v in many.items()} for i in range(P)]

    def sweep_many():
        return nd.sweeps.run(fn, many)

    def sweep_one():
        return nd.sweeps.run(fn, points[0])

    def loop():
        return [nd.sweeps.run(fn, p) for p in points]

    # Both compute the same 64 trainings: the vmapped sweep equals the loop of single runs.
    together, alone = sweep_many(), jax.block_until_ready(loop())
    for k in together:
        np.testing.assert_allclose(
            np.asarray(together[k]), np.concatenate([np.asarray(a[k]) for a in alone]), rtol=2e-3, atol=2e-4
        )
    t_many, _ = time_fn(sweep_many, repeats=3)
    t_one, _ = time_fn(sweep_one, repeats=3)
    t0 = time.perf_counter()
    jax.block_until_ready(loop())  # compiled already: the loop's best case
    t_loop = time.perf_counter() - t0
    problem = f"Layered (2, {hidden}, 2) RBP + SGD momentum, {steps} steps of batch 16, {P} points"
    return [
        row("sweep", problem, f"{P}-point vmapped sweep", "one point", t_many, t_one, "<= 8x"),
        row("sweep", problem, f"{P}-point vmapped sweep", f"Python loop of {P} runs", t_many, t_loop, f"loop ~ {P}x one point"),
    ]
