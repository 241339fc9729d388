"""Train a network on a classification set with each estimator, over seeds.

    python -m experiments.train --config configs/hopfield_digits.yaml [--quick] [--out DIR]

Every (estimator, seed) trains in its own resumable sub-run (`<out>/<estimator>-seed<k>/`):
kill the command and run it again to continue from the last epoch. The run writes
`summary.csv` (final test accuracy per estimator and seed), `metrics.jsonl` (per epoch) and
`figures/training.png` (loss and accuracy per estimator, band over seeds).
"""

import dataclasses
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
    name: str = "digits"  # digits, double_moon, mnist1d, mnist, fashion_mnist
    n: int = 1000  # double_moon and mnist1d: number of examples
    preprocessing: str = "none"  # none, center, standardize, pca, zca (fitted on the training split)
    idx_path: str = ""  # mnist, fashion_mnist: the directory of the IDX files
    radius: float = 10.0  # double_moon
    width: float = 6.0
    distance: float = -1.0
    valid_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class Network:
    kind: str = "hopfield"
    n_hidden: int = 64
    sizes: tuple[int, ...] = ()
    activation: str = "logistic"
    gain: float = 0.5
    init: str = "default"  # default, or transition: input fields' std at `init_scale` (seed 003)
    init_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Optimizer:
    name: str = "adam"
    learning_rate: float = 3e-3
    momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class StoppingConfig:
    grad_norm: float | None = None
    rel_loss_change: float | None = None
    patience: int | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = "train"
    data: Data = Data()
    network: Network = Network()
    loss: str = "squared_error"
    estimators: dict[str, Any] = dataclasses.field(default_factory=lambda: {"bptt": {"kind": "BPTT"}})
    optimizer: Optimizer = Optimizer()
    epochs: int = 20
    batch_size: int = 32
    l2: float = 0.0
    seeds: tuple[int, ...] = (0,)
    stopping: StoppingConfig = StoppingConfig()
    train_subset: int = 0
    dt0: float | None = None
    max_steps: int | None = None


def load_data(d: Data, seed: int):
    """Train / valid / test splits of the configured data set, preprocessed with statistics
    of the training split only."""
    load = ndc.dataset(d.name)
    if d.name == "double_moon":
        X, y = load(jr.PRNGKey(seed), d.n, radius=d.radius, width=d.width, distance=d.distance)
    elif d.name == "mnist1d":
        X, y = load(d.n, seed=seed)
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
    if d.preprocessing != "none":
        pre = Preprocessor.fit(train[0], d.preprocessing)  # fitted on training data only
        train, valid, test = [(np.asarray(pre(a)), b) for a, b in (train, valid, test)]
    return train, valid, test


def make_network(cfg: Config, n_in: int, n_out: int, key, X_train):
    act = ndc.activation(cfg.network.activation)
    cls = ndc.network_class(cfg.network.kind)
    if cls is nd.networks.Hopfield:
        net = cls(n_in, cfg.network.n_hidden, n_out, act, gain=cfg.network.gain, key=key)
    elif cls is nd.networks.Layered:
        net = cls((n_in, *cfg.network.sizes, n_out), act, key=key)
    elif cls is nd.networks.CTRNN:
        net = cls(cfg.network.n_hidden, n_in, n_out, act, gain=cfg.network.gain, key=key)
    else:
        raise ndc.ConfigError(f"network.kind: train builds hopfield, layered and ctrnn, not '{cfg.network.kind}'")
    if cfg.network.init == "transition":
        net = nd.training.transition_init(net, X_train, scale=cfg.network.init_scale)
    elif cfg.network.init != "default":
        raise ndc.ConfigError(f"network.init must be 'default' or 'transition', got '{cfg.network.init}'")
    return net


def make_optimizer(o: Optimizer):
    return ndc.optimizer(o.name, o.learning_rate, momentum=o.momentum)


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    if cfg.loss not in ("squared_error", "softmax_cross_entropy"):
        raise ndc.ConfigError(f"loss must be squared_error or softmax_cross_entropy, got '{cfg.loss}'")
    top = RunDir(args.out, cfg)
    estimators = {name: ndc.build_object(spec, f"estimators.{name}.") for name, spec in cfg.estimators.items()}
    loss = getattr(nd.losses, cfg.loss)
    options = {k: v for k, v in dict(dt0=cfg.dt0, max_steps=cfg.max_steps).items() if v is not None}
    optimizer = make_optimizer(cfg.optimizer)  # one object: fits of equal shapes share a compilation
    rows, curves = [], []
    for seed in cfg.seeds:
        train, valid, test = load_data(cfg.data, seed)
        if cfg.train_subset:
            train = (train[0][: cfg.train_subset], train[1][: cfg.train_subset])
        k = int(np.max(train[1])) + 1
        targets = nd.training.one_hot_targets(train[1], k) if cfg.loss == "squared_error" else jnp.asarray(train[1])
        for name, est in estimators.items():
            net = make_network(cfg, train[0].shape[1], k, jr.PRNGKey(seed), train[0])
            # Each (estimator, seed) is its own resumable run: a finished one is not retrained.
            sub = RunDir(top.path / f"{name}-seed{seed}", cfg)
            net, history = nd.training.fit(
                net, (train[0], targets), objective=nd.SteadyState(loss), estimator=est,
                optimizer=optimizer, epochs=cfg.epochs, batch_size=cfg.batch_size,
                key=jr.PRNGKey(1000 + seed), valid=valid, test=test, l2=cfg.l2,
                stopping=nd.training.Stopping(**dataclasses.asdict(cfg.stopping)), run=sub,
                log_extra=dict(estimator=name, seed=seed), **options,
            )
            curves += [dict(row, part="training") for row in history]
            last = history[-1]
            # Early stopping's model selection: the epoch where validation accuracy peaked.
            best = max(history, key=lambda r: (r.get("valid_accuracy") or 0.0, -r["epoch"]))
            rows.append(dict(estimator=name, seed=seed, epochs=last["epoch"], stopped=last.get("stopped"),
                             best_epoch=best["epoch"], train_loss=last["train_loss"],
                             valid_accuracy=best.get("valid_accuracy"), test_accuracy=best.get("test_accuracy"),
                             last_test_accuracy=last.get("test_accuracy"), converged_rate=last["converged_rate"]))
            print(f"{name} seed {seed}: test accuracy {best.get('test_accuracy'):.4f} at the best validation "
                  f"epoch {best['epoch']} of {last['epoch']}", file=sys.stderr)
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
