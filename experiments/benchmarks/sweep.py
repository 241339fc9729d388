"""A sweep of 64 points (seeds x learning rates) as one vmapped computation, against one
point and against a Python loop of runs, measured in the same process."""

import time

import jax

import neurodyn as nd
from experiments.sweep import Config, Grid, SweepAxes, make_problem

from ._timing import row, time_fn


def run(quick: bool = False, large: bool = False):
    hidden = 256 if large else 64
    P = 8 if quick else 64
    cfg = Config(n_data=256, steps=5 if quick else 20, batch_size=16, estimator={"kind": "RBP"},
                 sweep=SweepAxes(), grid=Grid(hidden=(hidden,)))
    fn = make_problem(cfg, hidden)
    seeds = list(range(P // 4))
    many = nd.sweeps.product(seed=seeds, learning_rate=[0.01, 0.03, 0.1, 0.3])
    one = {k: v[:1] for k, v in many.items()}

    def sweep_many():
        return nd.sweeps.run(fn, many)

    def sweep_one():
        return nd.sweeps.run(fn, one)

    t_many, _ = time_fn(sweep_many, repeats=3)
    t_one, _ = time_fn(sweep_one, repeats=3)
    # A Python loop of runs: P calls of the one-point function (compiled once, as the best case).
    t0 = time.perf_counter()
    for i in range(P):
        jax.block_until_ready(nd.sweeps.run(fn, {k: v[i : i + 1] for k, v in many.items()}))
    t_loop = time.perf_counter() - t0
    problem = f"Layered (2, {hidden}, 2) RBP training, {cfg.steps} SGD steps of 16, {P} points"
    return [
        row("sweep", problem, f"{P}-point vmapped sweep", "one point", t_many, t_one, "<= 8x"),
        row("sweep", problem, f"{P}-point vmapped sweep", f"Python loop of {P} runs", t_many, t_loop, f"vs {P}x"),
    ]
