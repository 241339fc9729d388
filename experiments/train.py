"""Train a network on a classification set with each estimator, over seeds.

    python -m experiments.train --config configs/hopfield_digits.yaml [--quick] [--out DIR]

Every (estimator, seed) trains in its own resumable sub-run (`<out>/<estimator>-seed<k>/`)
through `nd.training.fit` (the training engine): kill the command and run it again to
continue from the last epoch. `tensorboard: true` also writes TensorBoard event files there. The run writes
`summary.csv` (final test accuracy per estimator and seed), `metrics.jsonl` (per epoch) and
`figures/training.png` (loss and accuracy per estimator, band over seeds). Each sub-run keeps
its trained network (the best validation epoch's with `restore_best: true`):
`experiments.train.load_network("<out>/<estimator>-seed<k>")` returns it with the data splits
it was trained on.
"""

import dataclasses
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd
import neurodyn.plotting as ndp
from neurodyn import config as ndc
from neurodyn.preprocessing import Preprocessor
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class Data:
    name: str = ndc.field("digits", help="the data set", choices=lambda: ndc.names("datasets"))
    n: int = ndc.field(1000, help="double_moon and mnist1d (5000: the published set): number of examples", ge=1)
    preprocessing: str = ndc.field(
        "none", help="fitted on the training split only", choices=("none", "center", "standardize", "pca", "zca")
    )
    idx_path: str = ndc.field("", help="mnist, fashion_mnist: the directory of the IDX files")
    radius: float = ndc.field(10.0, help="double_moon: radius of the moons", gt=0)
    width: float = ndc.field(6.0, help="double_moon: width of the moons", gt=0)
    distance: float = ndc.field(-1.0, help="double_moon: vertical distance between the moons (negative: interleaved)")
    valid_fraction: float = ndc.field(0.1, help="fraction of the data held out for validation", ge=0, lt=1)
    test_fraction: float = ndc.field(
        0.2,
        help="fraction of the data held out for testing (mnist1d: its generator's test split, the last 20%)",
        ge=0,
        lt=1,
    )


@dataclasses.dataclass(frozen=True)
class Optimizer:
    name: str = ndc.field("adam", help="the optimiser", choices=lambda: ndc.names("optimizers"))
    learning_rate: float = ndc.field(3e-3, help="the learning rate", gt=0)
    momentum: float = ndc.field(0.9, help="sgd: heavy-ball momentum (0: plain SGD)", ge=0, lt=1)
    clip_norm: float | None = ndc.clip_norm_field()
    schedule: str = ndc.schedule_field()
    warmup_steps: int = ndc.warmup_steps_field()
    final_fraction: float = ndc.final_fraction_field()


@dataclasses.dataclass(frozen=True)
class StoppingConfig:
    grad_norm: float | None = ndc.field(None, help="stop when the gradient norm falls below this", gt=0)
    rel_loss_change: float | None = ndc.field(None, help="stop when the relative loss change falls below this", gt=0)
    patience: int | None = ndc.field(
        None, help="stop after this many epochs without a better validation accuracy", ge=1
    )


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = ndc.field("train", help="the experiment module (experiments.<experiment>)")
    data: Data = ndc.field(Data(), help="the data set and its splits")
    network: dict[str, Any] = ndc.field(
        default_factory=lambda: {"kind": "hopfield", "n_hidden": 64, "activation": "logistic", "gain": 0.5},
        help="{kind: network class, **its constructor arguments}; n_in, n_out (from the data) and key are "
        "passed by the experiment, sizes are the hidden layers",
        spec="networks",
    )
    init: str = ndc.field(
        "default",
        help="default, or transition: input fields' std at init_scale (LeCun et al. 1998)",
        choices=("default", "transition"),
    )
    init_scale: float = ndc.field(1.0, help="init: transition: the induced local fields' standard deviation", gt=0)
    loss: str = ndc.field("squared_error", help="the loss", choices=lambda: ndc.names("losses"))
    estimators: dict[str, Any] = ndc.field(
        default_factory=lambda: {"bptt": {"kind": "BPTT"}},
        help="name -> {kind: estimator class, **arguments}; each name is a sub-run folder",
        spec="estimators",
        names=True,
        nonempty=True,
    )
    optimizer: Optimizer = ndc.field(Optimizer(), help="the optimiser")
    epochs: int = ndc.field(20, help="passes over the training set", ge=1)
    batch_size: int = ndc.field(32, help="examples per mini-batch (at most the training set)", ge=1)
    l2: float = ndc.field(0.0, help="weight decay added to the gradient", ge=0)
    seeds: tuple[int, ...] = ndc.field(
        (0,), help="one run per seed (initialisation, split, batches)", ge=0, nonempty=True
    )
    stopping: StoppingConfig = ndc.field(StoppingConfig(), help="early stopping")
    train_subset: int = ndc.field(0, help="use only the first N training examples (0: all)", ge=0)
    dt0: float | None = ndc.field(None, help="the solver's step (default: the library's)", gt=0)
    max_steps: int | None = ndc.field(None, help="the solver's step budget (default: the library's)", ge=1)
    relaxation: dict[str, Any] | None = ndc.field(
        None,
        help="{kind: relaxation strategy, **arguments} for the steady states (default: the library's fixed step); "
        "Backoff shrinks the step per example where dt0 overshoots",
        spec="relaxations",
    )
    adapt_dt0: bool = ndc.field(
        False,
        help="when the converged rate falls and a smaller step converges where dt0 overshoots (the dt0 probe), "
        "continue training with that step (nd.training.fit's adapt_dt0)",
    )
    warm_backoff: bool = ndc.field(
        True,
        help="with a Backoff relaxation, start each mini-batch's relaxations at the step most of the previous "
        "batch's ended with, each epoch's first at dt0 (nd.training.fit's warm_backoff)",
    )
    restore_best: bool = ndc.field(
        False,
        help="each sub-run keeps the network of its best validation epoch, not its last (early stopping's "
        "model selection; nd.training.fit's restore_best); load it with experiments.train.load_network",
    )
    tensorboard: bool = ndc.field(
        False, help='also write TensorBoard event files into each sub-run (pip install -e ".[tb]")'
    )


def load_data(d: Data, seed: int):
    """Train / valid / test splits of the configured data set, preprocessed with statistics
    of the training split only."""
    load = ndc.dataset(d.name)
    if d.name == "double_moon":
        X, y = load(jr.PRNGKey(seed), d.n, radius=d.radius, width=d.width, distance=d.distance)
    elif d.name == "mnist1d":
        # The published data set (the generator's seed; n = 5000) and its own test split, the
        # last 20%, on which the published baselines were measured; validation comes out of
        # the training part, split by the run's seed.
        X, y = _mnist1d(d.n)
        n_train = int(0.8 * len(y))
        train, valid, _ = nd.data.split(
            X[:n_train], y[:n_train], seed=seed, valid_fraction=d.valid_fraction, test_fraction=0.0
        )
        test = (X[n_train:], y[n_train:])
        return _preprocess(d, train, valid, test)
    elif d.name in ("mnist", "fashion_mnist"):
        if not d.idx_path:
            raise ndc.ConfigError(f"data.name {d.name} reads local IDX files: set data.idx_path to their directory")
        try:
            X, y = load(d.idx_path)
        except FileNotFoundError as e:
            raise ndc.ConfigError(str(e)) from None
    else:
        X, y = load()
    train, valid, test = nd.data.split(
        np.asarray(X), np.asarray(y), seed=seed, valid_fraction=d.valid_fraction, test_fraction=d.test_fraction
    )
    return _preprocess(d, train, valid, test)


@functools.lru_cache(maxsize=2)
def _mnist1d(n: int):
    try:
        return ndc.dataset("mnist1d")(n)
    except ImportError as e:
        raise ndc.ConfigError(str(e)) from None


def _preprocess(d: Data, train, valid, test):
    if d.preprocessing != "none":
        pre = Preprocessor.fit(train[0], d.preprocessing)  # fitted on training data only
        train, valid, test = [(np.asarray(pre(a)), b) for a, b in (train, valid, test)]
    return train, valid, test


def make_network(cfg: Config, n_in: int, n_out: int, key, X_train):
    """Any network class of the registry (`ndc.build_network`), then the `init` option."""
    net = ndc.build_network(cfg.network, n_in=n_in, n_out=n_out, key=key)
    if cfg.init == "transition":
        try:
            net = nd.training.transition_init(net, X_train, scale=cfg.init_scale)
        except ValueError as e:  # a network that does not say where its inputs enter: one line
            raise ndc.ConfigError(f"'init: transition': {e}") from None
    return net


def check(cfg: Config):
    """Cross-field checks, before any work: the splits leave training data, a batch fits in
    the training set (of the first seed: the split sizes do not depend on the seed), the
    optimiser's schedule fits in the run's steps, and `init: transition` knows the network's
    input weights."""
    d = cfg.data
    if d.valid_fraction + d.test_fraction >= 1:
        raise ndc.ConfigError(
            f"'data.valid_fraction' + 'data.test_fraction' = {d.valid_fraction + d.test_fraction:g} leaves no "
            "training data: must be < 1"
        )
    if cfg.restore_best and d.valid_fraction == 0:
        raise ndc.ConfigError(
            "'restore_best' keeps the best validation epoch's network, but 'data.valid_fraction' = 0 holds no "
            "validation set: set data.valid_fraction > 0, or restore_best: false"
        )
    train, _, _ = load_data(d, cfg.seeds[0])
    if cfg.init == "transition":  # a network that cannot take it is refused before any run directory
        make_network(cfg, train[0].shape[1], int(np.max(train[1])) + 1, jr.PRNGKey(0), train[0])
    n = len(train[0]) if not cfg.train_subset else min(len(train[0]), cfg.train_subset)
    if cfg.batch_size > n:
        raise ndc.ConfigError(
            f"'batch_size' = {cfg.batch_size} is larger than the training set ({n} examples): must be <= {n}"
        )
    make_optimizer(cfg.optimizer, total_steps=cfg.epochs * (n // cfg.batch_size))  # a schedule that cannot run


def check_relaxation(relaxation, estimators):
    """BPTT differentiates the fixed-step loop and RTRL reproduces it: a strategy that
    combines steps otherwise (`Anderson`, `NewtonKrylov`, `Backoff`) is refused for them in
    one line, before the run directory exists."""
    if isinstance(relaxation, nd.relaxation.AbstractSteppingRelaxation):
        return
    for name, est in estimators.items():
        if isinstance(est, nd.RTRL) or (isinstance(est, nd.BPTT) and est.truncation is None):
            raise ndc.ConfigError(
                f"'relaxation' = {type(relaxation).__name__} cannot serve 'estimators.{name}' ({type(est).__name__} "
                "follows the fixed-step loop itself): drop 'relaxation' or that estimator, or use RBP / EP"
            )


def make_optimizer(o: Optimizer, total_steps: int | None = None):
    """The config's optimiser; `total_steps` (the run's optimiser steps: epochs x batches per
    epoch) ends a decaying schedule."""
    return ndc.optimizer_from(
        o, o.name, o.learning_rate, total_steps=total_steps, momentum=o.momentum, where="optimizer"
    )


def load_network(path):
    """The network an `experiments.train` sub-run trained, with the data it was trained on.

    `path`: a finished sub-run, `<out>/<estimator>-seed<k>/` (its network is saved when it
    ends; an interrupted one has none until its command is rerun). **Returns**
    `(net, (train, valid, test), info)`: the network (the last epoch's, or with
    `restore_best: true` the best validation epoch's), the run's splits
    as `(X, labels)` pairs, preprocessed as in training (the same seed, the same split, the
    statistics of the training split), and `info` (`seed`, `epoch`: the epoch whose
    parameters these are). For example `nd.training.accuracy(net, *test)` is the run's test
    accuracy at that epoch. Nothing in the directory is written."""
    run = RunDir.reader(path, ": pass a sub-run of experiments.train, <out>/<estimator>-seed<k>")
    cfg = run.read_config(Config)
    info = run.network_info()
    train, valid, test = load_data(cfg.data, info["seed"])
    if cfg.train_subset:
        train = (train[0][: cfg.train_subset], train[1][: cfg.train_subset])
    like = make_network(cfg, train[0].shape[1], info["n_out"], jr.PRNGKey(info["seed"]), train[0])
    return run.load_network(like), (train, valid, test), dict(seed=info["seed"], epoch=info["epoch"])


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    check(cfg)
    # Built before the run directory exists: a bad estimator leaves nothing behind.
    estimators = {
        name: ndc.build_object(spec, f"estimators.{name}.", family="estimators")
        for name, spec in cfg.estimators.items()
    }
    options: dict[str, Any] = {k: v for k, v in dict(dt0=cfg.dt0, max_steps=cfg.max_steps).items() if v is not None}
    if cfg.relaxation is not None:
        options["relaxation"] = relaxation = ndc.build_object(cfg.relaxation, "relaxation.", family="relaxations")
        check_relaxation(relaxation, estimators)
    top = RunDir(args.out, cfg)
    loss = ndc.loss(cfg.loss)
    # One optimiser per training-set size (the seeds' splits are the same size): fits of equal
    # shapes share a compilation. A decaying schedule ends at the run's last step.
    optimizers: dict[int, Any] = {}
    rows, curves = [], []
    for seed in cfg.seeds:
        train, valid, test = load_data(cfg.data, seed)
        if cfg.train_subset:
            train = (train[0][: cfg.train_subset], train[1][: cfg.train_subset])
        k = int(np.max(train[1])) + 1
        n_batches = len(train[0]) // cfg.batch_size
        if n_batches not in optimizers:
            optimizers[n_batches] = make_optimizer(cfg.optimizer, total_steps=cfg.epochs * n_batches)
        optimizer = optimizers[n_batches]
        targets = nd.training.one_hot_targets(train[1], k) if cfg.loss == "squared_error" else jnp.asarray(train[1])
        for name, est in estimators.items():
            net = make_network(cfg, train[0].shape[1], k, jr.PRNGKey(seed), train[0])
            # Each (estimator, seed) is its own resumable run: a finished one is not retrained.
            sub = RunDir(top.path / f"{ndc.check_name(name, 'estimators', key=True)}-seed{seed}", cfg)
            net, history = nd.training.fit(
                net,
                (train[0], targets),
                objective=nd.SteadyState(loss),
                estimator=est,
                optimizer=optimizer,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                key=jr.PRNGKey(1000 + seed),
                valid=valid,
                test=test,
                l2=cfg.l2,
                stopping=nd.training.Stopping(**dataclasses.asdict(cfg.stopping)),
                run=sub,
                log_extra=dict(estimator=name, seed=seed),
                tensorboard=cfg.tensorboard,
                adapt_dt0=cfg.adapt_dt0,
                warm_backoff=cfg.warm_backoff,
                restore_best=cfg.restore_best,
                **options,
            )
            curves += [dict(row, part="training") for row in history]
            last = history[-1]
            # Early stopping's model selection: the epoch where validation accuracy peaked.
            best = max(history, key=lambda r: (r.get("valid_accuracy") or 0.0, -r["epoch"]))
            # Kept for load_network: the parameters of this epoch, and what rebuilding the network needs.
            sub.save_network(net, seed=seed, n_out=k, epoch=(best if cfg.restore_best else last)["epoch"])
            rows.append(
                dict(
                    estimator=name,
                    seed=seed,
                    epochs=last["epoch"],
                    stopped=last.get("stopped"),
                    best_epoch=best["epoch"],
                    train_loss=last["train_loss"],
                    valid_accuracy=best.get("valid_accuracy"),
                    test_accuracy=best.get("test_accuracy"),
                    last_test_accuracy=last.get("test_accuracy"),
                    converged_rate=last["converged_rate"],
                    # A Backoff relaxation's mean final step in the last epoch (below dt0: it backed off).
                    **({"mean_dt": last["mean_dt"]} if "mean_dt" in last else {}),
                )
            )
            print(
                f"{name} seed {seed}: test accuracy {best.get('test_accuracy'):.4f} at the best validation "
                f"epoch {best['epoch']} of {last['epoch']}",
                file=sys.stderr,
            )
    # The top-level table is rebuilt from the sub-runs' histories (never appended twice on resume).
    top.replace_rows(curves)
    top.write_summary(rows)
    ndp.save(ndp.training_curves(curves, metrics=("train_loss", "test_accuracy")), top.figures / "training")
    by = {}
    for r in rows:
        by.setdefault(r["estimator"], []).append(r["test_accuracy"])
    for name, accs in by.items():
        print(f"  {name:<12} test accuracy {np.mean(accs):.4f} +- {np.std(accs):.4f} (over {len(accs)} seed(s))")


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "allow")
    main()
