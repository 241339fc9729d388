"""Training with any estimator: mini-batches, optax, Haykin's (2009) stopping criteria,
initialisation in the activation's transition region, checkpoints every epoch and resume.

```python
net = nd.training.transition_init(net, X_train)          # LeCun et al. (1998)'s initialisation
net, history = nd.training.fit(
    net, (X, Y), objective=nd.SteadyState(nd.losses.squared_error), estimator=nd.EP(0.1),
    optimizer=nd.config.optimizer("sgd", 0.05, momentum=0.9), epochs=20, batch_size=32,
    key=key, valid=(Xv, yv), test=(Xt, yt), l2=1e-4,
    stopping=nd.training.Stopping(patience=5), run=nd.runs.RunDir("runs/x"),
)
```

The one training engine, two pieces every experiment shares:

- `make_train_step(objective, estimator, optimizer, l2=..., **options)`: one step on a
  mini-batch, pure and jittable, `step(params, opt_state, static, xb, yb, weights=None) ->
  (params, opt_state, loss, info)`. Its gradient is `nd.batch_value_and_grad` (states per
  example, one reverse pass for the parameters), so every estimator trains through the same
  code. `fit` scans it over an epoch's mini-batches, `experiments.sweep` vmaps it over
  points, `experiments.sequence_task` compiles it once per estimator (per-example step
  weights of a `Trajectory` are `weights` of shape `(B, T)`).
- `train_loop(advance, state, units, run=..., evaluate=...)`: the loop. Each unit (an
  epoch; `log_every` steps; a piece of an online stream) is one call of `advance`, then the
  row, the finiteness checks, the evaluation, the stopping rules, the checkpoint, the row in
  `metrics.jsonl` (and TensorBoard, `tensorboard=True`) and one progress line on stderr
  (process 0 only; `progress=False` silences it).

With a `RunDir`, after every epoch the parameters, the optimiser state and the history are
checkpointed atomically; calling `fit` again with the same arguments continues from the last
epoch and ends with the same result as an uninterrupted run (every epoch's shuffle derives
from `fold_in(key, epoch)`, and the stopping rules read only the history). A run that stopped
is marked finished and is not trained further when called again. Checkpoints carry a
fingerprint of the settings (`fit_settings`): resuming with other settings raises
`nd.runs.StaleRunError` instead of returning the old run's numbers. A non-finite loss,
gradient or parameter raises `NonFiniteError` (or stops, `on_nonfinite="stop"`) and is
never checkpointed. When the fraction of converged solves falls, the epoch's warning ends
with `dt0_probe`'s verdict: an Euler step that overshoots equilibria that training made
stiffer (with the `dt0` that fixes it) or a failure no smaller step fixes; with
`fit(adapt_dt0=True)` training continues with that `dt0`.
"""

import dataclasses
import functools
import hashlib
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._batch import batch_value_and_grad, check_batch
from ._dynamics import relax
from ._misc import all_finite, tree_dtype
from ._objectives import SteadyState, Trajectory
from ._options import steady_state_options
from .config import ConfigError
from .losses import softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class Stopping:
    """The stopping criteria of Haykin (2009, sec. 4.13) (any one stops training; `None` disables one):

    - `grad_norm`: the Euclidean norm of the gradient (the epoch's mean over mini-batches)
      falls below this threshold;
    - `rel_loss_change`: the relative change of the average training loss per epoch,
      `|l_e - l_{e-1}| / |l_{e-1}|`, falls below this;
    - `patience`: the generalisation performance has peaked: the validation accuracy has not
      improved for this many epochs.
    """

    grad_norm: float | None = None
    rel_loss_change: float | None = None
    patience: int | None = None


def stop_reason(history: list[dict], stopping: Stopping) -> str | None:
    """Which criterion of `stopping` the `history` (rows of `fit`) meets, or `None`."""
    row = history[-1]
    if stopping.grad_norm is not None and row["grad_norm"] < stopping.grad_norm:
        return "grad_norm"
    if stopping.rel_loss_change is not None and len(history) > 1:
        prev = history[-2]["train_loss"]
        if abs(prev - row["train_loss"]) <= stopping.rel_loss_change * abs(prev):
            return "rel_loss_change"
    accs = [r.get("valid_accuracy") for r in history]
    if stopping.patience is not None and accs[-1] is not None:
        best = int(np.argmax([-np.inf if a is None else a for a in accs]))  # first epoch of the peak
        if len(history) - 1 - best >= stopping.patience:
            return "patience"
    return None


@eqx.filter_jit
def _predict(net, X, options):
    r, info = jax.vmap(lambda x: relax(net, x, **options))(X)
    return jnp.argmax(jax.vmap(net.readout)(r), axis=-1), info["converged"]


def accuracy(net, X, y, **options) -> float:
    """Classification accuracy of `argmax(readout(r*))` at the steady state (`y` integer labels)."""
    pred, _ = _predict(net, jnp.asarray(X), options)
    return float(jnp.mean(pred == jnp.asarray(y).astype(pred.dtype)))


class DataError(ConfigError):
    """A data set `fit` cannot train on or score with (a shape, a class index outside the
    readout's classes, a NaN or an infinity), raised before training by `check_data`. A
    `ValueError` (and an `nd.config.ConfigError`: an experiment ends with its one line)."""


# How `fit` checks its valid and test sets: inputs and integer labels for `accuracy`, which
# relaxes to the steady state whatever the training objective.
_LABELS = SteadyState(loss=softmax_cross_entropy)


def _check_labelled(net, X, y, what: str) -> None:
    X, y = jnp.asarray(X), jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        if not bool(jnp.all(y == jnp.round(y))):
            raise DataError(
                f"{what} labels must be class indices (integers in [0, {net.n_out})) for the accuracy; "
                f"got {y.dtype} values that are not whole numbers. Pass the labels, not one-hot targets."
            )
        y = y.astype(jnp.int32)
    check_data(net, _LABELS, X, y, what)


# Examples `fit`'s dt0 probe relaxes when the converged rate falls.
_PROBE = 256


@jax.jit
def _bad_rows(a):
    bad = ~jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    return jnp.sum(bad), jnp.argmax(bad)


def check_data(net, objective, X, Y, what: str = "train") -> None:
    """Checks a data set `(X, Y)` before training on it or scoring with it; raises a
    `DataError` (a `ValueError`) naming the problem and the fix.

    - the shapes and dtypes `nd.batch_value_and_grad` takes (`Y` as the objective's loss
      takes it: class indices in `[0, n_out)`, or float targets of the readout's shape);
    - every input (and every float target) finite. A NaN or an infinity in the data would
      otherwise surface epochs later as a non-finite loss, indistinguishable from training
      that diverged, or as a silently wrong accuracy.

    `fit` calls it on `train` with its objective, and on `valid` and `test` as the class
    labels `accuracy` takes. One pass over the data; a global `jax.Array` is reduced where
    it lives.
    """
    rank = 2 if isinstance(objective, SteadyState) else 3 if isinstance(objective, Trajectory) else None
    if rank is not None and X.ndim != rank:
        want = "(N, n_in)" if rank == 2 else "(N, T, n_in)"
        raise DataError(
            f"{what} X has shape {X.shape}; a {type(objective).__name__} objective takes {want}, one example per row."
        )
    n = X.shape[0]
    if Y.shape[:1] != (n,):
        raise DataError(f"{what}: X has {n} examples but Y has shape {Y.shape}; they must share the leading axis.")
    if n == 0:
        raise DataError(f"{what}: the data set is empty.")
    if X.is_fully_addressable and getattr(Y, "is_fully_addressable", True):  # a global array: its blocks live elsewhere
        try:
            check_batch(net, objective, X, Y, None)
        except ValueError as e:
            raise DataError(str(e).replace("of the batch", f"of the {what} set")) from None
    for name, a in (("X", X), ("Y", Y)):
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            continue
        count, first = (int(v) for v in _bad_rows(a))
        if count:
            raise DataError(
                f"{what} {name} has non-finite values (NaN or inf) in {count} of its {n} rows, the first "
                f"row {first}; the relaxations would return NaN and training would stop as if it "
                f"diverged. Drop or impute those rows before training, e.g. "
                f"`keep = np.isfinite(X).all(axis=1)` and `X, Y = X[keep], Y[keep]`."
            )


def _check_arguments(objective, estimator, optimizer, epochs, batch_size, key, on_nonfinite, train, valid, test):
    """`fit`'s arguments other than the data's values, each with the fix in its message."""
    from .estimators import check_estimator

    check_estimator(estimator, objective)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"optimizer must be an optax transformation, e.g. optax.adam(1e-3) or "
            f"nd.config.optimizer('adam', 1e-3); got {optimizer!r}."
        )
    for name, value, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
    try:
        jr.fold_in(key, 0)
    except (TypeError, ValueError):
        raise ValueError(f"key must be a JAX random key, e.g. jax.random.key(0); got {key!r}.") from None
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    for name, data, what in (
        ("train", train, "(X, Y)"),
        ("valid", valid, "(X, labels)"),
        ("test", test, "(X, labels)"),
    ):
        if data is not None and not (isinstance(data, tuple | list) and len(data) == 2):
            raise ValueError(
                f"{name} must be a pair {what}, got {type(data).__name__}"
                + (f" of {len(data)}" if isinstance(data, tuple | list) else "")
                + "."
            )


def dt0_probe(net, X, *, factors=(1.0, 0.5, 0.25), **options) -> dict[float, float]:
    """The fraction of the relaxations of `X` (`nd.relax`, one per row) that converge with
    the step `dt0` of `options` (the library's default when not given) times each of
    `factors`: `{dt0: fraction}`.

    What it tells apart: training can make a network stiffer without making its
    equilibria unstable. Euler's step map `r + dt0 F(r)` contracts about `r*` only while
    every eigenvalue `lambda` of `dF/dr` there has `|1 + dt0 lambda| < 1` (for a real
    `lambda < 0`: `dt0 < 2 / |lambda|`); past that, each step overshoots `r*` and the
    relaxation oscillates about it (it ends `stagnated`). Those relaxations converge at a
    smaller `dt0`, to the same `r*`. Relaxations that fail at every `dt0` point elsewhere:
    lost equilibria (lower the learning rate) or an activation whose slope jumps.
    `fit` runs this probe when the converged rate falls, and its warning says which case
    it is.

    **Arguments:** `net`; `X` `(N, n_in)` inputs; `factors` the multiples of `dt0` tried;
    `**options` the integration options of the relaxations (`dt0` among them).
    """
    dt0 = steady_state_options(tree_dtype(net), **options).dt0
    X = jnp.asarray(X)
    return {f * dt0: float(jnp.mean(_predict(net, X, dict(options, dt0=f * dt0))[1])) for f in factors}


def dt0_remedy(rates: dict[float, float]) -> float | None:
    """The `dt0` a `dt0_probe` points to: the largest one tried, after the first, at which
    nearly all (95%) of the probe converges, when the first `dt0` fails; else `None`."""
    (_, first), *smaller = rates.items()
    good = [step for step, rate in smaller if rate >= 0.95]
    return good[0] if first < 0.95 and good else None


def dt0_advice(rates: dict[float, float], *, adapted: bool = False) -> str:
    """One sentence from a `dt0_probe`: the largest `dt0` tried at which nearly all (95%)
    of the probe converges, if a smaller `dt0` than the first gets there (`dt0_remedy`;
    `adapted=True`: says that training continues with it, as `fit(adapt_dt0=True)` does);
    the best one and a lower learning rate if a smaller `dt0` gains at least 10 points;
    otherwise that a smaller step does not help."""
    (dt0, first), *smaller = rates.items()
    tried = ", ".join(f"{100 * rate:.0f}% at dt0 = {step:g}" for step, rate in rates.items())
    if first >= 0.95:
        return f"its relaxations converge at dt0 = {dt0:g} ({tried}): the failed solves are the estimator's own"
    remedy = dt0_remedy(rates)
    if remedy is not None:
        then = (
            f"training continues with dt0={remedy:g} from the next epoch (adapt_dt0)"
            if adapted
            else f"pass dt0={remedy:g} (--dt0 {remedy:g} on an experiment's command line)"
        )
        return (
            f"{tried}: the Euler step overshoots equilibria that training made stiffer "
            f"(stable only for dt0 < 2/|lambda| of dF/dr): {then}"
        )
    best_step, best = max(smaller, key=lambda item: item[1], default=(dt0, first))
    if best >= first + 0.1:
        return (
            f"{tried}: a smaller step helps only in part: pass dt0={best_step:g} and lower the learning rate "
            "(the rest converge at no step tried)"
        )
    return f"{tried}: a smaller step does not help; lower the learning rate"


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jtu.tree_leaves(tree)))


def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0


class TrainStep(eqx.Module):
    """One training step on a mini-batch, pure and jittable: the batch gradient
    (`nd.batch_value_and_grad`, one reverse pass), plus `l2 * w`, through the optax
    optimiser. Built by `make_train_step`; every experiment trains through it (`fit` scans
    it over an epoch's mini-batches, a sweep vmaps it over points, `experiments.sequence_task`
    compiles it once per estimator).

    `step(params, opt_state, static, xb, yb, weights=None) -> (params, opt_state, loss, info)`
    with `params, static = eqx.partition(net, eqx.is_inexact_array)`, `weights` optional
    per-example weights `(B,)`, or `(B, T)` per example and time for a `Trajectory` (as for
    `nd.batch_value_and_grad`), `loss` the batch's mean
    loss before the update and `info` scalars: `grad_norm` (of the gradient the optimiser
    got, l2 included), `converged_rate` (the fraction of the batch's solves that converged)
    and, after an `nd.relaxation.Backoff` relaxation, `mean_dt` (see `grad_and_stats`).

    A module (equal settings hash equal, so jitted functions taking it share one
    compilation); its fields may hold traced values (a swept learning rate inside the
    optimiser, an estimator from `nd.sweeps.with_values`, a traced `l2`)."""

    objective: Any
    estimator: Any
    optimizer: optax.GradientTransformation
    l2: Any = 0.0
    options: dict = eqx.field(default_factory=dict)

    def init(self, params):
        """The optimiser state for `params`."""
        with jax.numpy_dtype_promotion("standard"):  # optax mixes its int32 count with floats
            return self.optimizer.init(params)

    def grad(self, params, static, xb, yb, weights=None):
        """`(loss, grads, converged_rate)` of the batch: the gradient the optimiser gets."""
        loss, grads, stats = self.grad_and_stats(params, static, xb, yb, weights)
        return loss, grads, stats["converged_rate"]

    def grad_and_stats(self, params, static, xb, yb, weights=None):
        """`(loss, grads, stats)` of the batch: `grad`'s loss and gradient, and the batch's
        solver statistics as scalars: `converged_rate` (the fraction of its examples whose
        solves converged) and, after a relaxation that changes its step
        (`nd.relaxation.Backoff`), `mean_dt` (the mean step its relaxations ended with:
        below `dt0` when they had to back off)."""
        loss, grads, info = batch_value_and_grad(
            eqx.combine(params, static),
            xb,
            yb,
            objective=self.objective,
            estimator=self.estimator,
            weights=weights,
            **self.options,
        )
        if not _is_zero(self.l2):
            grads = jtu.tree_map(lambda g, p: g + self.l2 * p, grads, params)
        stats = dict(converged_rate=jnp.mean(info["converged"].astype(loss.dtype)))
        if "dt" in info:
            stats["mean_dt"] = jnp.mean(info["dt"].astype(loss.dtype))
        return loss, grads, stats

    def apply(self, params, opt_state, grads):
        """`(params, opt_state)` after one optimiser update with `grads`."""
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def __call__(self, params, opt_state, static, xb, yb, weights=None):
        loss, grads, stats = self.grad_and_stats(params, static, xb, yb, weights)
        params, opt_state = self.apply(params, opt_state, grads)
        return params, opt_state, loss, dict(grad_norm=_tree_norm(grads), **stats)


def make_train_step(objective, estimator, optimizer: optax.GradientTransformation, *, l2=0.0, **options) -> TrainStep:
    """The train step of `objective`, `estimator` and `optimizer` (with weight decay `l2` and
    integration `options`): `step(params, opt_state, static, xb, yb, weights=None) ->
    (params, opt_state, loss, info)`, see `TrainStep`.

    ```python
    step = nd.training.make_train_step(nd.SteadyState(loss), nd.RBP(), optax.adam(1e-3))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt_state = step.init(params)
    params, opt_state, loss, info = jax.jit(step, static_argnums=2)(params, opt_state, static, xb, yb)
    ```
    """
    return TrainStep(objective, estimator, optimizer, l2, dict(options))


def _warm_backoff(step) -> Any:
    """The `nd.relaxation.Backoff` an epoch of `step` warm-starts (`fit(warm_backoff=True)`),
    or `None`: one that sets no `initial` step of its own."""
    from .relaxation import Backoff

    relaxation = step.options.get("relaxation")
    return relaxation if isinstance(relaxation, Backoff) and relaxation.initial is None else None


def _next_level(level, start, mean_dt, relaxation):
    """The level (`dt0 * factor**level`) the next batch's relaxations start at: that of the
    mean step this batch's ended with, rounded in log scale (so it moves when most of the
    batch backed off: more than about 59% of it for `factor = 1/2`), never above `start`
    and at most `max_halvings` below `dt0`."""
    shrinks = jnp.round(jnp.log(mean_dt / start) / math.log(relaxation.factor))
    shrinks = jnp.where(jnp.isfinite(shrinks), shrinks, 0.0).astype(level.dtype)
    return jnp.clip(level + shrinks, level, relaxation.max_halvings)


def _scan_batches(params, opt_state, perm, X, Y, static, step, batch_sharding, warm=False):
    # With `warm` (`fit(warm_backoff=True)`), each batch's `Backoff` relaxations start at the
    # level the previous batch's typically ended at; the epoch's first batch at dt0.
    relaxation = _warm_backoff(step) if warm else None
    if relaxation is not None:
        dtype = tree_dtype(params)
        dt0 = jnp.asarray(steady_state_options(dtype, **step.options).dt0, dtype)
        factor = jnp.asarray(relaxation.factor, dtype)

    def start_of(level):
        return dt0 * factor ** level.astype(dtype)

    def stepping(level):
        if level is None:
            return step
        assert relaxation is not None
        started = dataclasses.replace(relaxation, initial=start_of(level))
        return dataclasses.replace(step, options=dict(step.options, relaxation=started))

    def batch_grad(params, xb, yb, level):
        return stepping(level).grad_and_stats(params, static, xb, yb)

    if batch_sharding is not None:
        # Data parallel: each device runs batch_value_and_grad on its slice of the batch (its
        # own relaxations, whose loops stop when its own examples have converged), and the
        # slices' mean loss and gradient are averaged across devices: one all-reduce per
        # mini-batch. Equal slices, so the mean of the means is the batch mean.
        def local(params, xb, yb, level):
            # One flat vector, so the step costs one all-reduce, not one per parameter array.
            flat, unflatten = jax.flatten_util.ravel_pytree(stepping(level).grad_and_stats(params, static, xb, yb))
            return unflatten(jax.lax.pmean(flat, "data"))

        data = PartitionSpec("data")
        batch_grad = jax.shard_map(
            local,
            mesh=batch_sharding.mesh,
            in_specs=(PartitionSpec(), data, data, PartitionSpec()),
            out_specs=PartitionSpec(),
            check_vma=False,
        )

    def one(carry, idx):
        params, opt_state, level = carry
        xb, yb = X[idx], Y[idx]
        if batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
            yb = jax.lax.with_sharding_constraint(yb, batch_sharding)
        loss, grads, stats = batch_grad(params, xb, yb, level)
        params, opt_state = step.apply(params, opt_state, grads)
        if level is not None:
            start = start_of(level)
            stats = dict(stats, start_dt=start)
            level = _next_level(level, start, stats["mean_dt"], relaxation)
        return (params, opt_state, level), (loss, _tree_norm(grads), stats)

    # `stats`: the batches' solver statistics (`TrainStep.grad_and_stats`), averaged.
    level = None if relaxation is None else jnp.asarray(0, jnp.int32)
    (params, opt_state, _), (loss, gnorm, stats) = jax.lax.scan(one, (params, opt_state, level), perm)
    return params, opt_state, jnp.mean(loss), jnp.mean(gnorm), jtu.tree_map(jnp.mean, stats)


# Module level, with everything as arguments: fits with equal settings share one compilation
# (equinox hashes the non-array arguments: the step's optimiser, objective, options).
@eqx.filter_jit
def _epoch(params, opt_state, key, X, Y, static, step, n_batches, batch_size, warm=False):
    perm = jr.permutation(key, X.shape[0])[: n_batches * batch_size].reshape(n_batches, batch_size)
    return _scan_batches(params, opt_state, perm, X, Y, static, step, None, warm)


@eqx.filter_jit
def _epoch_sharded(params, opt_state, perm, X, Y, static, step, batch_sharding, warm=False):
    # The data-parallel epoch: `perm` (the same as `_epoch` draws) comes in replicated, each
    # mini-batch is sharded over the mesh's "data" axis, parameters and optimiser state stay
    # replicated (the outputs are constrained to it, so every process holds the same copy).
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    out = _scan_batches(params, opt_state, perm, X, Y, static, step, batch_sharding, warm)
    return jax.lax.with_sharding_constraint(out, replicated)


def _data_devices(devices, batch_size, talk):
    """The devices `fit` shards each mini-batch over: `None` (single-device path) or a list."""
    if devices is None:
        found = jax.devices()
        if len(found) < 2:
            return None
        if batch_size % len(found):
            if talk:
                _say(
                    f"note: fit: batch_size {batch_size} does not divide over the {len(found)} devices: training on "
                    f"one device per process (a batch size that is a multiple of {len(found)} uses all of them)"
                )
            return None
        return found
    if isinstance(devices, str) and devices != "all":
        raise ValueError(f"devices={devices!r}: give None, 'all' or a list of devices")
    found = jax.devices() if isinstance(devices, str) else list(devices)
    if not found:
        raise ValueError("devices=[]: give at least one device")
    if batch_size % len(found):
        raise ValueError(
            f"devices: batch_size {batch_size} does not divide over {len(found)} devices: use a batch "
            f"size that is a multiple of {len(found)}, or other devices"
        )
    missing = {d.process_index for d in jax.devices()} - {d.process_index for d in found}
    if jax.process_count() > 1 and missing:
        raise ValueError(f"devices: no device of process(es) {sorted(missing)}: every process of a job must take part")
    return found if len(found) > 1 or jax.process_count() > 1 else (None if found[0] == jax.devices()[0] else found)


def _global(x, sharding):
    """`x` as a global array of `sharding`: kept when it already is one (a data set each
    process built from its own shard), else each process supplies its devices' blocks from
    its local copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _digest_view(x):
    """What `fit_settings` digests for a data array: the array itself, or for a global array
    of several processes (no process holds all of it) the sorted table of its blocks' offsets
    and content digests, gathered from every process: the same on every process, and no
    process gathers the data."""
    if not (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return x
    from jax.experimental import multihost_utils

    rows = []
    for shard in sorted(x.addressable_shards, key=lambda sh: sh.device.id):
        offsets = [sl.start or 0 for sl in shard.index]
        digest = int(_digest([np.asarray(shard.data)]), 16)
        rows.append(offsets + [digest >> 32, digest & 0xFFFFFFFF])
    table = np.asarray(multihost_utils.process_allgather(np.asarray(rows, np.int64))).reshape(-1, len(rows[0]))
    return np.unique(table, axis=0)  # sorted, replicas once


def _same_checkpoint_everywhere(run, meta):
    """Under `jax.distributed`: every process must resume from process 0's checkpoint (a
    collective: every process calls `fit`). Process 0 alone writes the run directory, so a
    directory the other processes do not see (a node-local path) is refused here instead of
    training on from different epochs."""
    from jax.experimental import multihost_utils

    from .runs import RunDirError

    ours = np.asarray(
        [-1 if meta is None else int(meta["step"]), 0 if meta is None else len(meta["history"])], np.int64
    )
    first = np.asarray(multihost_utils.broadcast_one_to_all(ours))
    if not np.array_equal(ours, first):
        raise RunDirError(
            f"process {jax.process_index()} finds {run.path} at epoch {max(int(ours[0]), 0)}, process 0 at epoch "
            f"{max(int(first[0]), 0)}: the run directory must be on a file system every process sees (shared), "
            "written by this job alone"
        )


def _global_tree(tree, sharding):
    """Array leaves as global arrays of `sharding` (typed PRNG keys through their key data)."""

    def put(x):
        if not isinstance(x, (jax.Array, np.ndarray)):
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jr.wrap_key_data(_global(jr.key_data(x), sharding), impl=jr.key_impl(x))
        return _global(x, sharding)

    return jtu.tree_map(put, tree)


def _widest_float():
    """float64 under 64-bit mode, else float32: a stored accuracy that holds the Python float
    it came from exactly, so an equal accuracy later compares equal (not as a new peak)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _local(tree):
    """Each array leaf as this process's first device's copy (replicated arrays only)."""
    return jtu.tree_map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


class NonFiniteError(ConfigError):
    """Training diverged: the loss, the gradient norm or the parameters stopped being finite.
    A `ValueError` (and an `nd.config.ConfigError`: an experiment in `nd.config.entrypoint`
    ends with its one line and exit code 2); the message names the epoch, what was not
    finite and what to change."""


def _digest(tree) -> str:
    """sha256 (16 hex digits) of a pytree's array leaves: shapes, dtypes and exact bytes."""
    h = hashlib.sha256()
    for leaf in jtu.tree_leaves(tree):
        if eqx.is_array(leaf) or isinstance(leaf, np.ndarray):
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def _structure(obj, depth=0) -> str:
    if depth > 20:
        return "..."
    if eqx.is_array(obj) or isinstance(obj, np.ndarray):
        return f"{np.dtype(obj.dtype).name}{list(np.shape(obj))}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = ", ".join(
            f"{f.name}={_structure(getattr(obj, f.name, None), depth + 1)}" for f in dataclasses.fields(obj)
        )
        return f"{type(obj).__name__}({fields})"
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__}({', '.join(_structure(v, depth + 1) for v in obj)})"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_structure(v, depth + 1)}" for k, v in obj.items()) + "}"
    if isinstance(obj, functools.partial):
        return f"partial({_structure(obj.func, depth + 1)}, {_structure(obj.args, depth + 1)}, {_structure(obj.keywords, depth + 1)})"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _describe(obj) -> str:
    """A module's structure (classes, every field, functions by name, arrays by dtype and
    shape) plus the digest of its array values."""
    arrays = [x for x in jtu.tree_leaves(obj) if eqx.is_array(x)]
    text = _structure(obj)
    return f"{text} #{_digest(arrays)}" if arrays else text


def _optimizer_probe(optimizer, opt_state, params) -> str:
    """What an optax transformation is, as far as can be told (they are closures): the
    structure of its state and its first two updates on an all-ones gradient (learning rate,
    momentum, decay), rounded to 6 digits so another device's last bits do not matter."""
    structure = hashlib.sha256(str(jtu.tree_structure(opt_state)).encode()).hexdigest()[:16]
    try:
        with jax.numpy_dtype_promotion("standard"):
            probe = jtu.tree_map(jnp.ones_like, params)
            n = max(sum(int(np.size(p)) for p in jtu.tree_leaves(params)), 1)
            state, steps = opt_state, []
            for _ in range(2):
                updates, state = optimizer.update(probe, state, params)
                steps.append(sum(float(jnp.sum(u)) for u in jtu.tree_leaves(updates)) / n)
        return f"state {structure}, updates on ones " + ", ".join(f"{v:.6g}" for v in steps)
    except Exception as e:  # an update that needs extra arguments (value=...): the structure only
        return f"state {structure} (no probe: {type(e).__name__})"


def fit_settings(
    net, train, *, objective, estimator, optimizer, batch_size, key=None, l2=0.0, valid=None, test=None, **options
) -> dict:
    """The fingerprint `fit` records in every checkpoint and compares on resume: everything
    that changes the numbers except `epochs` (raising it continues a run), `stopping` and
    `log_extra`. Strings and numbers only (JSON): the estimator, objective and options
    (`eqx.tree_pformat` + a digest of their arrays), the optimiser (optax transformations are
    closures: the structure of its state and its first two updates on an all-ones gradient,
    which tell the learning rate and momentum), batch size, l2, and digests of the data
    (train, valid, test), of the initial parameters, of the network's structure and of `key`.

    The digests are of exact bytes: resuming on another device type whose data or
    initialisation differs in the last bits is refused too."""
    params = eqx.filter(net, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    return dict(
        estimator=_describe(estimator),
        objective=_describe(objective),
        optimizer=_optimizer_probe(optimizer, opt_state, params),
        batch_size=int(batch_size),
        l2=float(l2),
        options=_describe(dict(sorted(options.items()))),
        train=_digest(train),
        valid=None if valid is None else _digest(valid),
        test=None if test is None else _digest(test),
        initial_params=_digest(params),
        network=_describe(eqx.filter(net, eqx.is_array, inverse=True)),
        key=None if key is None else _digest(_key_data(key)),
    )


def _key_data(key):
    return jr.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


_all_finite = eqx.filter_jit(all_finite)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _converged_rate_fell(history) -> bool:
    """The converged rate fell below 95% and at least 2 points below its best epoch."""
    rates = [r["converged_rate"] for r in history]
    return rates[-1] < 0.95 and rates[-1] < max(rates) - 0.02


def _progress_line(
    tag, row, units, steps, times, *, unit="epoch", total=None, interval=None, done=None, trained=None
) -> str:
    """`[tag] epoch 3/20  loss ...  valid acc ...  converged ...  N steps/s (s/epoch)  ETA`:
    `row["epoch"]` counts `unit`s up to `total` (default `units`); `steps` training steps
    took `trained` seconds (default `times[-1]`, the whole unit); the ETA is the mean time of the rows after the first (which
    holds the compilation) times the `units - done` rows left."""
    per_unit = float(np.mean(times[1:] if len(times) > 1 else times))
    done = row["epoch"] if done is None else done
    parts = [f"[{tag}] {unit} {row['epoch']}/{units if total is None else total}", f"loss {row['train_loss']:.6g}"]
    for key, name in (("valid_accuracy", "valid acc"), ("test_accuracy", "test acc"), ("test_mse", "test mse")):
        if row.get(key) is not None and (key != "test_accuracy" or row.get("valid_accuracy") is None):
            parts.append(f"{name} {row[key]:.4f}")
    if row.get("converged_rate") is not None:
        parts.append(f"converged {100 * row['converged_rate']:.0f}%")
    if row.get("mean_dt") is not None:
        parts.append(f"dt {row['mean_dt']:.3g}")
    parts.append(f"{steps / (trained or times[-1]):.3g} steps/s ({times[-1]:.3g} s/{interval or unit})")
    if row.get("stopped"):
        parts.append(f"stopped: {row['stopped']}")
    else:
        parts.append(f"ETA {_seconds(per_unit * (units - done))}")
    return "  ".join(parts)


class _TensorBoard:
    """The rows' numbers as TensorBoard scalars (tensorboardX event files in the run
    directory, next to metrics.jsonl), step = the row's counter."""

    def __init__(self, path):
        try:
            from tensorboardX import SummaryWriter  # pyright: ignore[reportMissingImports] (the optional tb extra)
        except ImportError:
            raise ConfigError(
                'tensorboard: true needs tensorboardX, which is not installed: pip install -e ".[tb]"'
            ) from None
        self.writer = SummaryWriter(logdir=str(path))

    def add(self, row, unit):
        step = int(row["epoch"])
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


def train_loop(
    advance: Callable,
    state,
    units: int,
    *,
    run=None,
    settings: dict | None = None,
    evaluate: Callable | None = None,
    stopping: Stopping = Stopping(),
    on_nonfinite: str = "raise",
    progress: bool = True,
    log_extra: dict | None = None,
    tag: str = "",
    unit: str = "epoch",
    total: int | None = None,
    interval: str | None = None,
    steps: int | Callable[[int], int] = 1,
    place: Callable | None = None,
    tensorboard: bool = False,
    diagnose: Callable | None = None,
):
    """The one training loop: `units` calls of `advance`, each followed by the row, the
    checks, the evaluation, the checkpoint and the progress line; resumes from `run`.

    **Arguments:**

    - `advance(state, i) -> (state, row)`: the `i`-th unit of training (an epoch of `fit`,
      `log_every` steps of `experiments.sequence_task`, a chunk of an online stream), pure in
      `i` (its data derives from `i`, e.g. `fold_in(key, i)`, so a resumed run sees the same
      batches). `row` holds `train_loss` and optionally `epoch` (the counter shown and logged;
      default `i + 1`), `grad_norm`, `converged_rate` and any other columns.
    - `state`: the initial training state, a pytree of arrays (`(params, opt_state)`), what
      is checkpointed.
    - `run`: an `nd.runs.RunDir`: after every unit the state, the history and `settings` are
      checkpointed (atomically; resume continues from the newest intact one; `settings`
      that differ from the checkpoint's raise `nd.runs.StaleRunError`), the row is appended
      to `metrics.jsonl`; a finished run is returned as it is, and a run that ended for
      lack of units continues when given more.
    - `evaluate(state) -> dict | (dict, state)`: columns added after each finite unit
      (`valid_accuracy`, ...); a returned state replaces the unit's before it is
      checkpointed (`fit(restore_best=True)` keeps the best parameters in it).
    - `stopping`: a `Stopping` (its rules read the history only).
    - `on_nonfinite`: `"raise"` (`NonFiniteError`) or `"stop"` when the loss, the gradient
      norm or the state's floats stop being finite; the non-finite state is never
      checkpointed.
    - `progress`, `log_extra`, `tag`: one line per unit on stderr (process 0), prefixed
      `[tag]`; `log_extra` columns are added to every row.
    - `unit`, `total`, `interval`, `steps`: the progress line's words: `row["epoch"]` counts
      `unit`s up to `total` (default `units`); `steps` (an int or `i -> int`) training steps
      per unit give the steps/s; `interval` names the time a unit takes (default `unit`).
    - `place(state) -> state`: applied to a restored state (e.g. to put it on devices).
    - `tensorboard`: also write the rows as TensorBoard scalars in the run directory
      (tensorboardX; the optional extra `tb`).
    - `diagnose(state) -> str | None | (str, state)`: run when a unit's `converged_rate`
      falls (the warning line); its sentence ends that warning (`fit`: a `dt0_probe`). A
      returned state replaces the unit's before it is checkpointed (`fit(adapt_dt0=True)`
      records a smaller `dt0` in it).

    **Returns:** `(state, history)`. A unit that stops training records the reason in its
    row's `stopped`: a `stopping` criterion, `"nonfinite"`, or `unit + "s"` (all done).
    """
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    talk = progress and jax.process_index() == 0
    extra = log_extra or {}
    end = f"{unit}s"
    history, start = [], 0
    board = _TensorBoard(run.path) if tensorboard and run is not None and run.writer else None
    if tensorboard and run is None and talk:
        _say(f"[{tag}] note: tensorboard=True writes into a run directory: pass run=nd.runs.RunDir(...)")
    if run is not None:
        restored, meta = run.checkpoint(state, expect=None if settings is None else dict(settings=settings))
        if jax.process_count() > 1:
            _same_checkpoint_everywhere(run, meta)
        if restored is not None:
            state = restored if place is None else place(restored)
            history, start = meta["history"], meta["step"]
            if meta.get("finished") and history and history[-1].get("stopped") == end and start < units:
                # More units than the run was given: it continues, as if it had been given them
                # from the start (its last row was not the end).
                history[-1] = {k: v for k, v in history[-1].items() if k != "stopped"}
                meta["finished"] = False
            run.replace_rows(history)  # rows a killed run logged after its last checkpoint go
            if meta.get("finished") or start >= units:
                if talk:
                    last = history[-1] if history else {}
                    _say(
                        f"[{tag}] {run.path}: finished already ({last.get('stopped')} at {unit} "
                        f"{last.get('epoch')}), not retrained"
                    )
                if board is not None:
                    board.close()
                return state, history
        if talk:
            _say(
                f"[{tag}] run directory {run.path}: "
                + (
                    f"resuming after {unit} {history[-1]['epoch'] if history else start}/{total or units}"
                    if start
                    else "new run"
                )
            )

    def checkpoint(state, i, finished):
        assert run is not None
        run.save_checkpoint(state, dict(step=i + 1, history=history, finished=finished, settings=settings))

    times = []
    for i in range(start, units):
        t0 = time.perf_counter()
        new_state, row = advance(state, i)
        trained = time.perf_counter() - t0  # the steps/s: training only, without the evaluation
        row: dict[str, Any] = dict(epoch=i + 1, **row) if "epoch" not in row else dict(row)
        checks = [("the training loss", row["train_loss"])]
        if "grad_norm" in row:
            checks.append(("the gradient norm", row["grad_norm"]))
        bad = [what for what, v in checks if not math.isfinite(v)]
        if not bool(_all_finite(eqx.filter(new_state, eqx.is_inexact_array))):
            bad.append("the parameters")
        if bad:
            kept = (
                f"; the last finite checkpoint ({unit} {history[-1]['epoch']}) is kept in {run.path}"
                if run is not None and history
                else ""
            )
            what = bad[0] if len(bad) == 1 else ", ".join(bad[:-1]) + " and " + bad[-1]
            values = f"loss {row['train_loss']:.6g}" + (
                f", gradient norm {row['grad_norm']:.6g}" if "grad_norm" in row else ""
            )
            message = (
                f"{unit} {row['epoch']}/{total or units}: {what} became non-finite ({values}): training diverged; "
                f"lower the learning rate, or dt0 if the dynamics blew up{kept}"
            )
            if on_nonfinite == "raise":
                if board is not None:
                    board.close()
                raise NonFiniteError(message)
            # "stop": keep the last finite state; the row says why training ended.
            row.update(seconds=time.perf_counter() - t0, **extra, stopped="nonfinite")
            history.append(row)
            if run is not None:
                checkpoint(state, i, True)
                run.log(row)
            if talk:
                _say(f"[{tag}] {message}: stopped")
            break
        state = new_state
        if evaluate is not None:
            found = evaluate(state)
            if isinstance(found, tuple):  # the evaluation changed the state (fit's restore_best)
                found, state = found
            row.update(found)
        row["seconds"] = time.perf_counter() - t0
        row.update(extra)
        history.append(row)
        reason = stop_reason(history, stopping)
        if reason is None and i + 1 == units:
            reason = end
        if reason is not None:
            row["stopped"] = reason
        fell = "converged_rate" in row and _converged_rate_fell(history)
        found = diagnose(state) if fell and diagnose is not None else None
        if isinstance(found, tuple):  # the diagnosis changed the state (fit's adapt_dt0)
            found, state = found
        if run is not None:
            # The checkpoint first: a kill before the log line loses nothing (resume rewrites
            # metrics.jsonl from the checkpoint's history).
            checkpoint(state, i, reason is not None)
            run.log(row)
        if board is not None:
            board.add(row, unit)
        times.append(row["seconds"])
        if talk:
            n_steps = steps(i) if callable(steps) else steps
            line = _progress_line(
                tag, row, units, n_steps, times, unit=unit, total=total, interval=interval, done=i + 1, trained=trained
            )
            _say(line)
            if fell:
                _say(
                    f"[{tag}] warning: only {100 * row['converged_rate']:.0f}% of the examples' solves converged "
                    f"this {unit} (best {100 * max(r['converged_rate'] for r in history):.0f}%): their gradients are "
                    "unreliable; lower dt0 or the learning rate (info['result'] says stagnated, max_steps or nonfinite)"
                    + ("" if found is None else f"; {found}")
                )
        if reason is not None:
            break
    if board is not None:
        board.close()
    if talk and run is not None:
        _say(f"[{tag}] done: {history[-1].get('stopped') if history else 'no ' + end}; run directory {run.path}")
    return state, history


def fit(
    net,
    train,
    *,
    objective,
    estimator,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key,
    valid=None,
    test=None,
    l2: float = 0.0,
    stopping: Stopping = Stopping(),
    run=None,
    progress: bool = True,
    log_extra: dict | None = None,
    on_nonfinite: str = "raise",
    devices=None,
    tensorboard: bool = False,
    adapt_dt0: bool = False,
    warm_backoff: bool = True,
    restore_best: bool = False,
    **options,
):
    """Trains `net` on `train = (X, Y)` with mini-batch gradients from `estimator`.

    **Arguments:**

    - `net`: the network; its inexact-array leaves are trained.
    - `train`: `(X, Y)`, `X` `(N, n_in)`, `Y` the targets the objective's loss takes
      (one-hot floats for `squared_error`, integer labels for `softmax_cross_entropy`).
    - `objective`, `estimator`: as for `nd.value_and_grad`.
    - `optimizer`: an optax transformation (`nd.config.optimizer("sgd", lr, momentum=0.9)`;
      `clip_norm=` and `schedule=` there clip each batch gradient and set the rate per step).
    - `epochs`, `batch_size`: `N // batch_size` mini-batches per epoch, reshuffled each epoch
      (a remainder is dropped for that epoch).
    - `key`: the shuffling key.
    - `valid`, `test`: `(X, labels)` with integer labels, for accuracies after each epoch.
      All three data sets are checked before training (`check_data`): a shape, a class
      index outside the readout's classes or a NaN in the data raises a `DataError` naming
      the set and the row, instead of a non-finite loss epochs later.
    - `l2`: weight decay, adds `l2 * w` to the gradient (the gradient of `nd.losses.l2_penalty`).
    - `stopping`: a `Stopping`.
    - `run`: an `nd.runs.RunDir`: rows go to `metrics.jsonl`, checkpoints every epoch, resume.
    - `progress`: one line per epoch on stderr (process 0 only, also when stderr is a file):
      epoch/epochs, loss, valid accuracy, converged rate, steps/s, s/epoch and ETA; and the
      run directory at the start and the end. `False`: quiet.
    - `log_extra`: columns added to every row (e.g. the estimator's name and the seed).
    - `on_nonfinite`: when an epoch's loss, gradient norm or parameters are not finite:
      `"raise"` (default) raises `NonFiniteError`; `"stop"` ends training, returns the last
      finite parameters and adds a row with `stopped="nonfinite"`. Either way the
      non-finite parameters are never checkpointed.
    - `devices`: data parallelism. `None` (default): every device (`jax.devices()`, all
      processes') when there is more than one and `batch_size` divides evenly over them,
      else one device (with a note on stderr when several exist). `"all"` or a list of
      devices: those, and a `ValueError` when `batch_size` does not divide over them. Each
      mini-batch is sharded over the devices with
      `NamedSharding(Mesh(devices, ("data",)), PartitionSpec("data"))`, the parameters and
      the optimiser state are replicated, and the batch gradient (`nd.batch_value_and_grad`,
      a mean over the batch) is averaged across devices (`jax.shard_map` with one
      `lax.pmean` per mini-batch: each device relaxes its own examples): the same numbers
      as one device up to the order of the float sums. See "Data parallel" below.
    - `tensorboard`: also write every row as TensorBoard scalars into the run directory
      (needs `run` and tensorboardX: `pip install -e ".[tb]"`).
    - `adapt_dt0`: when the converged rate falls and the `dt0` probe (below) finds that a
      smaller step converges where `dt0` overshoots, training continues with that step
      (`SteadyState` objectives only: the equilibria, hence the objective, do not depend on
      the step; only the solves' cost does). Each row then records its `dt0`, and the step
      is checkpointed with the parameters (a resumed run continues with it).
    - `warm_backoff`: with an `nd.relaxation.Backoff` relaxation (and no `initial` step of
      its own), each mini-batch's relaxations start at the step most of the previous
      batch's ended with (`dt0 * factor**k`, `k` from the rounded log of their mean step:
      it moves when more than about 59% of the batch backed off, for `factor = 1/2`)
      instead of finding it again from `dt0`; each epoch's first batch starts at `dt0`, so
      the step can grow back once training makes the flow less stiff. The equilibria, hence
      the gradients, do not depend on the step; each relaxation saves the `window` tests it
      spends at every step that overshoots. Rows then carry `start_dt`, the epoch's mean
      starting step. `False`: every relaxation starts at `dt0`.
    - `restore_best`: return the parameters of the epoch with the highest validation
      accuracy (the first epoch of the peak, the epoch `Stopping(patience=...)` counts
      from) instead of the last epoch's: early stopping's model selection (Prechelt, 1998).
      Needs `valid`. The best parameters are part of the checkpointed state, so a resumed
      run returns the same network as an uninterrupted one.
    - `**options`: integration options passed to every relaxation.

    **When the converged rate falls** (below 95% and 2 points below its best epoch), `fit`
    relaxes the first 256 training examples at `dt0`, `dt0/2` and `dt0/4` (`dt0_probe`) and
    its warning says which case it is: a step that overshoots equilibria that training made
    stiffer (a smaller `dt0` converges: pass it, or `adapt_dt0=True`), or relaxations that
    converge at no step (lower the learning rate).

    Each mini-batch is one `TrainStep` (`make_train_step`), scanned over the epoch in one
    jitted call; the epochs run through `train_loop`, the loop every experiment shares.

    **Returns:** `(net, history)`; `history` is a list of per-epoch rows: `epoch`,
    `train_loss`, `grad_norm`, `converged_rate` (the fraction of examples whose forward and
    estimator solves converged), `mean_dt` (after an `nd.relaxation.Backoff` relaxation: the
    mean step the relaxations ended with, below `dt0` where they backed off; with
    `warm_backoff`, also `start_dt`, the mean step they started at), `valid_accuracy`,
    `test_accuracy`, `seconds`, and `stopped` (the criterion that stopped training, on the
    last row).

    **Resume.** With a `RunDir`, after every epoch the parameters, the optimiser state, the
    history and `fit_settings(...)` (a fingerprint of everything but `epochs`, `stopping` and
    `log_extra`) are checkpointed. Calling `fit` again continues from the newest intact
    checkpoint (a damaged one falls back to an older one) and ends with the same result as an
    uninterrupted run; more `epochs` continue a run; a finished run is returned as it is.
    Other settings (estimator, optimiser or learning rate, batch size, l2, options, key, data,
    initial network) raise `nd.runs.StaleRunError` instead of returning another run's numbers.

    **Data parallel.** The training set is replicated on every device (each device gathers
    its slice of every mini-batch locally) and every epoch draws the same permutation as on
    one device. Host arrays (NumPy, or JAX arrays of one process) are placed on the devices
    with `jax.make_array_from_callback` from each process's local copy. A data set too large
    for that, in a multi-process job, is passed as a global `jax.Array` that each process
    built from only its own rows (`nd.distributed.global_array(load_rows, sharding,
    shape=...)`, rows sharded over the devices): `fit` uses it as it is (the checkpoint
    fingerprint then digests each block where it lives and gathers only the digests).
    Validation and test accuracies are computed by every process on its own first device.
    The returned network lives on this process's first device, as with one device. Under `jax.distributed` every process calls
    `fit` with the same arguments (run directories are written by process 0 only and read by
    all, so a killed job rerun with the same command resumes everywhere from one epoch).

    !!! note

        The returned network is the last epoch's unless `restore_best=True`; `history`
        names the epoch where the validation accuracy peaked either way.
    """
    _check_arguments(objective, estimator, optimizer, epochs, batch_size, key, on_nonfinite, train, valid, test)
    X, Y = train
    if not (isinstance(X, jax.Array) and not X.is_fully_addressable):  # a global array is kept as it is
        X, Y = jnp.asarray(X), jnp.asarray(Y)
    if restore_best and valid is None:
        raise ValueError(
            "restore_best=True returns the parameters of the best validation epoch: pass valid=(X, labels), "
            "or drop restore_best"
        )
    check_data(net, objective, X, Y, "train")
    for what, data in (("valid", valid), ("test", test)):
        if data is not None:
            _check_labelled(net, data[0], data[1], what)
    n = X.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples: lower batch_size.")
    n_batches = n // batch_size
    # When the converged rate falls: the free relaxations of (at most) the first 256
    # training examples at dt0, dt0/2 and dt0/4, which tells an overshooting step from
    # lost equilibria (`dt0_probe`). Not on a global array that this process cannot read.
    probe = X[:_PROBE] if isinstance(objective, SteadyState) and X.is_fully_addressable else None
    if adapt_dt0 and probe is None:
        raise ValueError(
            "adapt_dt0=True needs a SteadyState objective (a Trajectory's dt0 is its discretisation, not a "
            "solver setting) and training data this process can read; "
            f"got {type(objective).__name__} objective" + ("" if X.is_fully_addressable else " and a global array")
        )
    # adapt_dt0: the step is options' dt0 / 2**halvings, `halvings` an int in the state.
    base_dt0 = steady_state_options(tree_dtype(net), **options).dt0 if adapt_dt0 else None

    def options_at(halvings: int) -> dict:
        return options if halvings == 0 else dict(options, dt0=base_dt0 / 2**halvings)

    steps_at: dict[int, TrainStep] = {}

    def step_at(halvings: int) -> TrainStep:
        if halvings not in steps_at:
            steps_at[halvings] = make_train_step(objective, estimator, optimizer, l2=l2, **options_at(halvings))
        return steps_at[halvings]

    step = step_at(0)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt_state = step.init(params)
    talk = progress and jax.process_index() == 0
    data_devices = _data_devices(devices, batch_size, talk)
    extra = log_extra or {}
    tag = "/".join(str(extra[k]) for k in ("estimator", "seed") if k in extra) or type(estimator).__name__
    settings = None
    if run is not None:
        settings = fit_settings(
            net,
            (_digest_view(X), _digest_view(Y)),
            objective=objective,
            estimator=estimator,
            optimizer=optimizer,
            batch_size=batch_size,
            key=key,
            l2=l2,
            valid=valid,
            test=test,
            **options,
        )
        if adapt_dt0:
            settings["adapt_dt0"] = True
        if warm_backoff and _warm_backoff(step) is not None:
            settings["warm_backoff"] = True
        if restore_best:
            settings["restore_best"] = True

    place: Callable | None = None
    if data_devices is not None:
        mesh = Mesh(np.asarray(data_devices), ("data",))
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        X, Y = _global(X, replicated), _global(Y, replicated)

        def place_replicated(state):
            return _global_tree(state, replicated)

        place = place_replicated

    def halvings_of(state) -> int:
        return int(_local(state[2])) if adapt_dt0 else 0

    def advance(state, epoch):
        params, opt_state = state[:2]
        step = step_at(halvings_of(state))
        if data_devices is None:
            params, opt_state, loss, gnorm, stats = _epoch(
                params, opt_state, jr.fold_in(key, epoch), X, Y, static, step, n_batches, batch_size, warm_backoff
            )
        else:
            # The permutation `_epoch` draws, drawn on this process's device (the same bits on
            # every process) and replicated.
            perm = jr.permutation(jr.fold_in(key, epoch), n)[: n_batches * batch_size].reshape(n_batches, batch_size)
            params, opt_state, loss, gnorm, stats = _epoch_sharded(
                params, opt_state, _global(perm, replicated), X, Y, static, step, batch_sharding, warm_backoff
            )
        row = dict(train_loss=float(loss), grad_norm=float(gnorm), **{k: float(v) for k, v in stats.items()})
        if adapt_dt0:
            row["dt0"] = base_dt0 / 2 ** halvings_of(state)
        return (params, opt_state, *state[2:]), row

    def evaluate(state):
        current = eqx.combine(state[0] if data_devices is None else _local(state[0]), static)
        at = options_at(halvings_of(state))
        row = {}
        if valid is not None:
            row["valid_accuracy"] = accuracy(current, *valid, **at)
        if test is not None:
            row["test_accuracy"] = accuracy(current, *test, **at)
        if restore_best and row["valid_accuracy"] > float(_local(state[-1][1])):
            # A new peak (strictly higher: the first epoch of a plateau stays): keep its
            # parameters (arrays are immutable, so this holds them, it copies nothing).
            peak = jnp.asarray(row["valid_accuracy"], _widest_float())
            return row, (*state[:-1], (state[0], peak if place is None else place(peak)))
        return row

    def diagnose(state):
        assert probe is not None
        current = eqx.combine(state[0] if data_devices is None else _local(state[0]), static)
        halvings = halvings_of(state)
        rates = dt0_probe(current, np.asarray(probe), **options_at(halvings))
        said = f"a probe of {probe.shape[0]} training examples: {dt0_advice(rates, adapted=adapt_dt0)}"
        remedy = dt0_remedy(rates)
        if not adapt_dt0 or remedy is None:
            return said
        # The probe's steps are dt0 / 2**k: the remedy is the current step halved k times.
        halvings += round(math.log2(next(iter(rates)) / remedy))
        new = (*state[:2], jnp.asarray(halvings, jnp.int32), *state[3:])
        return said, new if place is None else place(new)

    # The state: the parameters, the optimiser state, then (adapt_dt0) the step's halvings
    # and (restore_best) the best validation epoch's parameters and accuracy (-1: none yet;
    # finite, since the state's floats are checked for divergence).
    state = (params, opt_state) + ((jnp.asarray(0, jnp.int32),) if adapt_dt0 else ())
    if restore_best:
        state = (*state, (params, jnp.asarray(-1.0, _widest_float())))
    if place is not None:
        state = place(state)
        if talk and data_devices is not None:
            _say(f"[{tag}] data parallel over {len(data_devices)} devices ({jax.process_count()} process(es))")
    state, history = train_loop(
        advance,
        state,
        epochs,
        run=run,
        settings=settings,
        evaluate=evaluate if valid is not None or test is not None else None,
        stopping=stopping,
        on_nonfinite=on_nonfinite,
        progress=progress,
        log_extra=extra,
        tag=tag,
        steps=n_batches,
        place=place,
        tensorboard=tensorboard,
        # The probe costs a compilation: only when its sentence is shown or acted on.
        diagnose=diagnose if probe is not None and (talk or adapt_dt0) else None,
    )
    params = state[-1][0] if restore_best else state[0]
    if data_devices is not None:
        params = _local(params)
    return eqx.combine(params, static), history


def transition_init(net, X, *, scale: float = 1.0):
    """Rescales the input-side weights of `net` so that the induced local fields (the
    pre-activations) on the data `X` have standard deviation `scale`: the rule of LeCun et al. (1998, "Efficient BackProp"), "the
    standard deviation of the induced local fields lies at the transition" between the
    linear and saturated parts of the activation (about 1 for logistic and tanh).

    - `Layered`: each layer in turn, on the activities of the (rescaled) layer below, so every
      layer's fields have standard deviation `scale` over the data.
    - `CTRNN`, `Hopfield` (`U`), `LayeredHopfield` (`W_1`) and `Elman` (`W_b`): the input
      weights, so the input drive has standard deviation `scale`; the recurrent weights keep
      their `gain`, which sets the dynamics' stability.
    - any network that declares `nd.networks.AbstractInputRescalable` (a user's network
      implements its `rescale_inputs(X, scale)`); others are refused with one line.

    Call it with the training inputs only (after preprocessing).

    **Returns:** the rescaled network.
    """
    from .networks import AbstractInputRescalable

    if not isinstance(net, AbstractInputRescalable):
        raise ValueError(
            f"transition_init does not know the input weights of {type(net).__name__}: list "
            "nd.networks.AbstractInputRescalable among its bases and implement rescale_inputs(X, scale) "
            "(see CTRNN's), or rescale the weights yourself."
        )
    return net.rescale_inputs(jnp.asarray(X), scale)


def one_hot_targets(y, k: int, low: float = 0.0, high: float = 1.0):
    """Integer labels to float targets for a squared-error readout (EP's usual choice)."""
    return low + (high - low) * jax.nn.one_hot(jnp.asarray(y), k)
