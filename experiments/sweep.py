"""A hyperparameter sweep run as ONE jitted, vmapped (and device-sharded) computation.

    python -m experiments.sweep --config configs/sweep_double_moon.yaml [--quick] [--out DIR]

Each point trains a `Layered` network (ReLU hidden units) on the double moon for `steps`
mini-batch steps and reports its final training loss and test accuracy. The `sweep:` axes
are numeric and run together, as one `jit(vmap)` sharded over every local device:

- `seed`: the initialisation and mini-batch keys;
- `learning_rate`: the optimiser's learning rate (SGD with momentum or Adam);
- `estimator: {field: values}`: array fields of the estimators (EP's `beta`, an adjoint's
  `adjoint.rtol`), set with `nd.sweeps.with_values`.

The `grid:` axes are static (hidden sizes, and the `estimators:` mapping): one compile each.
Points run in chunks of `chunk`; a chunk's results are saved as soon as it finishes, so a
killed run re-run with the same command recomputes no finished chunk.

Multi-process: pass `--distributed` (every experiment takes it; the config field
`distributed: true` does the same) and start one process per node with `srun`, or give the
launch yourself: `--coordinator-address HOST:PORT --num-processes N --process-id I`. The sweep
axis is sharded over every device of every process, the results are gathered to every
process, and process 0 writes the run directory; a killed job rerun with the same command
recomputes no finished chunk.
"""

import dataclasses
import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd
import neurodyn.distributed  # noqa: F401  (nd.distributed)
from neurodyn import config as ndc
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class SweepAxes:
    seed: tuple[int, ...] = ndc.field(
        (0, 1, 2, 3), help="the seeds (initialisation and mini-batches)", ge=0, nonempty=True
    )
    learning_rate: tuple[float, ...] = ndc.field((0.01, 0.03), help="the learning rates", gt=0, nonempty=True)
    estimator: dict[str, tuple[float, ...]] = ndc.field(
        default_factory=dict, help="array field of the estimators (beta, adjoint.rtol) -> its values"
    )


@dataclasses.dataclass(frozen=True)
class Grid:
    hidden: tuple[int, ...] = ndc.field((16,), help="hidden layer sizes (one compile each)", ge=1, nonempty=True)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    name: str = ndc.field("sgd", help="the optimiser", choices=lambda: ndc.names("optimizers"))
    momentum: float = ndc.field(0.9, help="sgd: heavy-ball momentum (0: plain SGD)", ge=0, lt=1)
    clip_norm: float | None = ndc.clip_norm_field()
    schedule: str = ndc.schedule_field()
    warmup_steps: int = ndc.warmup_steps_field()
    final_fraction: float = ndc.final_fraction_field()


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = ndc.field("sweep", help="the experiment module (experiments.<experiment>)")
    n_data: int = ndc.field(512, help="double moon examples (80% train, 20% test)", ge=2)
    steps: int = ndc.field(200, help="mini-batch steps per point", ge=1)
    batch_size: int = ndc.field(32, help="examples per mini-batch (at most the training set)", ge=1)
    estimators: dict[str, Any] = ndc.field(
        default_factory=lambda: {"rbp": {"kind": "RBP"}},
        help="name -> {kind: estimator class, **arguments}; each name is part of a checkpoint file name",
        spec="estimators",
        names=True,
        nonempty=True,
    )
    optimizer: Optimizer = ndc.field(Optimizer(), help="the optimiser")
    sweep: SweepAxes = ndc.field(SweepAxes(), help="numeric axes, run together as one jit(vmap)")
    grid: Grid = ndc.field(Grid(), help="static axes, one compile each")
    chunk: int = ndc.field(64, help="points per saved chunk", ge=1)
    distributed: bool = ndc.field(
        False,
        help="jax.distributed.initialize() from the cluster's environment (SLURM); the --distributed flag is the same",
    )


def n_train(cfg: Config) -> int:
    """The training split's size (the split of `make_problem`)."""
    X, y = nd.data.double_moon(jr.PRNGKey(0), cfg.n_data, distance=-1.0)
    (tr, _, _) = nd.data.split(np.asarray(X), np.asarray(y), valid_fraction=0.0)
    return len(tr[0])


def make_optimizer(cfg: Config, learning_rate):
    """The config's optimiser at a (traced) point's learning rate, its schedule over `steps`."""
    o = cfg.optimizer
    return ndc.optimizer_from(o, o.name, learning_rate, total_steps=cfg.steps, momentum=o.momentum, where="optimizer")


def make_problem(cfg: Config, hidden: int, estimator, estimator_axes=(), make_step=None):
    """`train_point(point) -> {final_loss, test_accuracy}`: one training run as a pure
    function of the swept numbers, ready for `nd.sweeps.run`. Each mini-batch is one step of
    `make_step(objective, estimator, optimizer)` (default `nd.training.make_train_step`, the
    training engine's step on `nd.batch_value_and_grad`; `experiments.benchmarks.sweep`
    passes the old per-example path)."""
    make_step = nd.training.make_train_step if make_step is None else make_step
    X, y = nd.data.double_moon(jr.PRNGKey(0), cfg.n_data, distance=-1.0)
    (tr, _, te) = nd.data.split(np.asarray(X), np.asarray(y), valid_fraction=0.0)
    pre = nd.preprocessing.Preprocessor.fit(tr[0], "standardize")  # training split only
    obj = nd.SteadyState(nd.losses.softmax_cross_entropy)
    Xtr, ytr = pre(jnp.asarray(tr[0])), jnp.asarray(tr[1])
    Xte, yte = pre(jnp.asarray(te[0])), jnp.asarray(te[1])

    def train_point(point):
        key = jr.PRNGKey(point["seed"])
        est = nd.sweeps.with_values(estimator, {name: point[f"estimator.{name}"] for name in estimator_axes})
        net = nd.networks.Layered((2, hidden, 2), nd.activations.relu, key=key)
        params, static = eqx.partition(net, eqx.is_inexact_array)
        opt = make_optimizer(cfg, point["learning_rate"])
        step = make_step(obj, est, opt)  # the swept learning rate and estimator fields are traced in it

        def one(carry, idx):
            params, opt_state = carry
            params, opt_state, loss, _ = step(params, opt_state, static, Xtr[idx], ytr[idx])
            return (params, opt_state), loss

        # Every step's mini-batch, drawn before the loop: B of the n examples without
        # replacement for each step's key (Floyd's algorithm: jr.choice sorts all n, and a
        # generic-comparator sort was half the time of a vmapped sweep on the CPU), as one
        # vectorised draw rather than one per step.
        keys = jr.split(jr.fold_in(key, 1), cfg.steps)
        batches = jax.vmap(lambda k: nd.sweeps.sample_without_replacement(k, Xtr.shape[0], cfg.batch_size))(keys)
        (params, _), losses = jax.lax.scan(one, (params, step.init(params)), batches)
        net = eqx.combine(params, static)
        r, _ = jax.vmap(lambda x: nd.relax(net, x))(Xte)
        pred = jnp.argmax(jax.vmap(net.readout)(r), -1)
        acc = jnp.mean((pred == yte.astype(pred.dtype)).astype(losses.dtype))
        return dict(final_loss=jnp.mean(losses[-10:]), test_accuracy=acc)

    return train_point


def sweep_points(cfg: Config) -> dict:
    axes = dict(seed=cfg.sweep.seed, learning_rate=cfg.sweep.learning_rate)
    axes.update({f"estimator.{k}": tuple(v) for k, v in cfg.sweep.estimator.items()})
    return nd.sweeps.product(**axes)


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)  # --distributed: initialised here
    if cfg.distributed:
        nd.distributed.initialize()  # the config field: from the cluster's environment (SLURM)
    if cfg.batch_size > (n := n_train(cfg)):
        raise ndc.ConfigError(
            f"'batch_size' = {cfg.batch_size} is larger than the training set ({n} examples): must be <= {n}"
        )
    estimators = {
        name: ndc.build_object(spec, f"estimators.{name}.", family="estimators")
        for name, spec in cfg.estimators.items()
    }
    estimator_axes = tuple(cfg.sweep.estimator)
    for name, est in estimators.items():
        try:
            nd.sweeps.with_values(est, {k: 0.0 for k in estimator_axes})
        except ValueError as e:
            raise ndc.ConfigError(f"sweep.estimator with estimators.{name}: {e}") from None
    make_optimizer(cfg, 1.0)  # a schedule that cannot run is refused before the run directory
    run = RunDir(args.out, cfg)
    points = sweep_points(cfg)
    P = nd.sweeps.n_points(points)
    rows = []
    for name, est in estimators.items():
        for hidden in cfg.grid.hidden:
            fn = make_problem(cfg, hidden, est, estimator_axes)
            for start in range(0, P, cfg.chunk):
                key = f"{ndc.check_name(name, 'estimators', key=True)}-hidden{hidden}-points{start}-{min(start + cfg.chunk, P)}"
                # A chunk's rows are a checksummed result: a damaged one is named and recomputed.
                chunk_rows = run.load_result(key) if run.done(key) else None
                if chunk_rows is not None:
                    print(f"{key}: done already, not recomputed", file=sys.stderr)
                else:
                    sub = {k: v[start : start + cfg.chunk] for k, v in points.items()}
                    out = nd.sweeps.run(fn, sub)
                    chunk_rows = [
                        dict(
                            estimator=name,
                            hidden=hidden,
                            **{k: np.asarray(v)[i].item() for k, v in sub.items()},
                            **{k: float(np.asarray(v)[i]) for k, v in out.items()},
                        )
                        for i in range(nd.sweeps.n_points(sub))
                    ]
                    run.save_result(key, chunk_rows)
                    run.mark_done(key)  # after the result: a done marker always has its results
                rows += chunk_rows
    run.replace_rows(rows)  # rebuilt from the chunks: never duplicated by a resumed run
    run.write_summary(rows)
    if run.writer:
        import neurodyn.plotting as ndp

        group = ("estimator", "hidden", *[f"estimator.{k}" for k in estimator_axes])
        ndp.save(ndp.sweep_curves(rows, x="learning_rate", metric="test_accuracy", group=group), run.figures / "sweep")
    best = max(rows, key=lambda r: r["test_accuracy"])
    print(f"{len(rows)} sweep points on {len(jax.devices())} device(s); best: {best}")


if __name__ == "__main__":
    main()
