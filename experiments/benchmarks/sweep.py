"""A sweep of 64 training runs (16 seeds x 4 learning rates) as one vmapped computation,
against one run and against a Python loop of the 64 runs, measured in the same process.

Each run trains a `Layered` network `(2, n, 2)` (ReLU hidden units) on the double moon with
RBP gradients of each mini-batch from `nd.batch_value_and_grad` (the batch path) and SGD with
momentum, then measures its test accuracy: the `experiments.sweep` problem. Target: the
64-point sweep costs at most 8x one point (CPU at n = 64; `large=True`, the GPU size,
n = 256), where the loop costs about 64x. Before timing, the sweep's results are checked
against the loop's, point by point. One more row times the same sweep on the old path
(`nd.batch_mean` of the vmapped `nd.value_and_grad` per mini-batch), and one the sweep of
half the points: from the two, what one more point costs inside the sweep (the ratio to one
point cannot fall below the points times that marginal cost over one point's time).
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import neurodyn as nd
from experiments.sweep import Config, Grid, make_problem as sweep_make_problem, Optimizer, SweepAxes

from ._timing import row, time_side_by_side


class PerExampleStep(nd.training.TrainStep):
    """The training engine's step with the old gradient path: the batch mean of the vmapped
    one-example `nd.value_and_grad` (B per-example gradients, then a reduction)."""

    def grad(self, params, static, xb, yb, weights=None):
        net = eqx.combine(params, static)

        def one(x, t):
            return nd.value_and_grad(net, x, t, objective=self.objective, estimator=self.estimator, **self.options)

        losses, grads, info = jax.vmap(one)(xb, yb)
        return jnp.mean(losses), nd.batch_mean(grads), jnp.mean(info["converged"].astype(losses.dtype))


def make_problem(cfg: Config, hidden: int, estimator, batch: bool = True):
    """`experiments.sweep.make_problem`'s training run (the same data, split, network,
    optimiser, training engine step and metrics), with the mini-batch gradient from
    `nd.batch_value_and_grad` (`batch=True`) or from the batch mean of the vmapped
    `nd.value_and_grad` (the old path, `PerExampleStep`)."""
    return sweep_make_problem(cfg, hidden, estimator, make_step=None if batch else PerExampleStep)


def run(quick: bool = False, large: bool = False):
    hidden = 256 if large else (8 if quick else 64)
    seeds = list(range(2 if quick else 16))
    learning_rates = [0.01, 0.03, 0.1, 0.3]
    steps = 5 if quick else 20
    repeats = 3 if quick else 7
    cfg = Config(
        n_data=256,
        steps=steps,
        batch_size=16,
        optimizer=Optimizer("sgd", 0.9),
        sweep=SweepAxes(seed=tuple(seeds), learning_rate=tuple(learning_rates)),
        grid=Grid(hidden=(hidden,)),
    )
    fn = make_problem(cfg, hidden, nd.RBP())
    fn_old = make_problem(cfg, hidden, nd.RBP(), batch=False)
    many = nd.sweeps.product(seed=seeds, learning_rate=learning_rates)
    P = nd.sweeps.n_points(many)
    points = [{k: v[i : i + 1] for k, v in many.items()} for i in range(P)]

    def sweep_many():
        return nd.sweeps.run(fn, many)

    def sweep_one():
        return nd.sweeps.run(fn, points[0])

    half = {k: v[: P // 2] for k, v in many.items()}

    def sweep_half():
        return nd.sweeps.run(fn, half)

    def sweep_many_old():
        return nd.sweeps.run(fn_old, many)

    def loop():
        return [nd.sweeps.run(fn, p) for p in points]

    # Both compute the same 64 trainings: the vmapped sweep equals the loop of single runs and
    # the old path's sweep.
    together, alone, old = sweep_many(), jax.block_until_ready(loop()), sweep_many_old()
    for k in together:
        np.testing.assert_allclose(
            np.asarray(together[k]), np.concatenate([np.asarray(a[k]) for a in alone]), rtol=2e-3, atol=2e-4
        )
        np.testing.assert_allclose(np.asarray(together[k]), np.asarray(old[k]), rtol=2e-3, atol=2e-4)
    t_many, t_one, t_old, t_half = time_side_by_side(
        [(sweep_many,), (sweep_one,), (sweep_many_old,), (sweep_half,)], repeats=repeats
    )
    t0 = time.perf_counter()
    jax.block_until_ready(loop())  # compiled already: the loop's best case
    t_loop = time.perf_counter() - t0
    problem = f"Layered (2, {hidden}, 2) RBP batch_value_and_grad + SGD momentum, {steps} steps of batch 16, {P} points"
    acc = np.asarray(together["test_accuracy"])
    # What one more point costs inside the vmapped sweep (from the P/2- and P-point sweeps),
    # against a point run alone: the sweep's cost is `fixed + marginal * P`, so the ratio to
    # one point is bounded below by `P * marginal / one` however small the fixed part gets.
    marginal = (t_many - t_half) / (P - P // 2)
    extra = dict(
        test_accuracy_mean=float(acc.mean()),
        test_accuracy_max=float(acc.max()),
        marginal_ms_per_point=1e3 * marginal,
        floor_ratio=P * marginal / t_one,
    )
    return [
        row("sweep", problem, f"{P}-point vmapped sweep", "one point", t_many, t_one, "<= 8x", **extra),
        row(
            "sweep",
            problem,
            f"{P}-point vmapped sweep",
            f"{P // 2}-point vmapped sweep",
            t_many,
            t_half,
            f"context: 2x = linear in the points; marginal point {1e3 * marginal:.3f} ms, "
            f"{P} x marginal / one point = {P * marginal / t_one:.1f}x",
            **extra,
        ),
        row(
            "sweep",
            problem,
            f"{P}-point vmapped sweep",
            f"Python loop of {P} runs",
            t_many,
            t_loop,
            f"loop ~ {P}x one point",
            **extra,
        ),
        row(
            "sweep",
            problem,
            f"{P}-point vmapped sweep, batch_value_and_grad",
            f"{P}-point vmapped sweep, batch_mean of vmapped value_and_grad (old path)",
            t_many,
            t_old,
            "speed-up (below 1: the batch path is faster)",
            **extra,
        ),
    ]
