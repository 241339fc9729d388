"""A hyperparameter sweep run as ONE jitted, vmapped (and device-sharded) computation.

    python -m experiments.sweep --config configs/sweep_double_moon.yaml [--quick] [--out DIR]

Each point trains a `Layered` network on the double moon with SGD for `steps` steps and
reports its final training loss and test accuracy. The `sweep:` axes (seed, learning_rate,
...) are stacked and run together in chunks of `chunk` points; a chunk's results are saved
as soon as it finishes, so a killed run re-run with the same command recomputes no finished
chunk. The `grid:` axes (hidden sizes) are static: one compile each.
"""

import dataclasses
import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd
from neurodyn import config as ndc
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class SweepAxes:
    seed: tuple[int, ...] = (0, 1, 2, 3)
    learning_rate: tuple[float, ...] = (0.01, 0.03)


@dataclasses.dataclass(frozen=True)
class Grid:
    hidden: tuple[int, ...] = (16,)


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = "sweep"
    n_data: int = 512
    steps: int = 200
    batch_size: int = 32
    estimator: dict = dataclasses.field(default_factory=lambda: {"kind": "RBP"})
    sweep: SweepAxes = SweepAxes()
    grid: Grid = Grid()
    chunk: int = 64


def make_problem(cfg: Config, hidden: int):
    X, y = nd.data.double_moon(jr.PRNGKey(0), cfg.n_data, distance=-1.0)
    X = (X - X.mean(0)) / X.std(0)
    (tr, _, te) = nd.data.split(np.asarray(X), np.asarray(y), valid_fraction=0.0)
    est = ndc.build_object(cfg.estimator)
    obj = nd.SteadyState(nd.losses.softmax_cross_entropy)
    Xtr, ytr = jnp.asarray(tr[0]), jnp.asarray(tr[1])
    Xte, yte = jnp.asarray(te[0]), jnp.asarray(te[1])

    def train_point(point):
        key = jr.PRNGKey(point["seed"])
        net = nd.networks.Layered((2, hidden, 2), nd.activations.relu, key=key)
        params, static = eqx.partition(net, eqx.is_inexact_array)
        lr = point["learning_rate"].astype(Xtr.dtype)

        def step(params, k):
            idx = jr.choice(k, Xtr.shape[0], (cfg.batch_size,), replace=False)
            net = eqx.combine(params, static)
            losses, grads, _ = jax.vmap(lambda x, t: nd.value_and_grad(net, x, t, objective=obj, estimator=est))(Xtr[idx], ytr[idx])
            grads = nd.batch_mean(grads)
            return jax.tree.map(lambda p, g: p - lr * g, params, grads), jnp.mean(losses)

        params, losses = jax.lax.scan(step, params, jr.split(jr.fold_in(key, 1), cfg.steps))
        net = eqx.combine(params, static)
        r, _ = jax.vmap(lambda x: nd.relax(net, x))(Xte)
        acc = jnp.mean(jnp.argmax(jax.vmap(net.readout)(r), -1) == yte)
        return dict(final_loss=jnp.mean(losses[-10:]), test_accuracy=acc)

    return train_point


def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    run = RunDir(args.out, cfg)
    points = nd.sweeps.product(**dataclasses.asdict(cfg.sweep))
    P = nd.sweeps.n_points(points)
    rows = []
    for hidden in cfg.grid.hidden:
        fn = make_problem(cfg, hidden)
        for start in range(0, P, cfg.chunk):
            key = f"hidden{hidden}-points{start}-{min(start + cfg.chunk, P)}"
            result_file = run.path / "checkpoints" / f"{key}.json"
            if run.done(key):
                chunk_rows = json.loads(result_file.read_text())
                print(f"{key}: done already, not recomputed", file=sys.stderr)
            else:
                sub = {k: v[start : start + cfg.chunk] for k, v in points.items()}
                out = nd.sweeps.run(fn, sub)
                chunk_rows = [
                    dict({k: float(v[i]) for k, v in sub.items()}, hidden=hidden,
                         **{k: float(np.asarray(v)[i]) for k, v in out.items()})
                    for i in range(len(next(iter(sub.values()))))
                ]
                from neurodyn.runs import atomic_write

                atomic_write(result_file, json.dumps(chunk_rows))
                run.mark_done(key)
                for r in chunk_rows:
                    run.log(r)
            rows += chunk_rows
    run.write_summary(rows)
    best = max(rows, key=lambda r: r["test_accuracy"])
    print(f"{len(rows)} sweep points on {len(jax.devices())} device(s); best: {best}")


if __name__ == "__main__":
    main()
