"""Training with any estimator: mini-batches, optax, the seed notes' stopping criteria,
initialisation in the activation's transition region, checkpoints every epoch and resume.

```python
net = nd.training.transition_init(net, X_train)          # seed 003's initialisation
net, history = nd.training.fit(
    net, (X, Y), objective=nd.SteadyState(nd.losses.squared_error), estimator=nd.EP(0.1),
    optimizer=nd.config.optimizer("sgd", 0.05, momentum=0.9), epochs=20, batch_size=32,
    key=key, valid=(Xv, yv), test=(Xt, yt), l2=1e-4,
    stopping=nd.training.Stopping(patience=5), run=nd.runs.RunDir("runs/x"),
)
```

One epoch is one jitted `lax.scan` over mini-batches: the batch gradient is the mean of
`jax.vmap(nd.value_and_grad)` over the batch (`nd.value_and_grad` acts on one example), so
every estimator trains through the same code. The progress bar (tqdm, process 0 only)
advances once per jitted epoch.

With a `RunDir`, after every epoch the parameters, the optimiser state and the history are
checkpointed atomically; calling `fit` again with the same arguments continues from the last
epoch and ends with the same result as an uninterrupted run (every epoch's shuffle derives
from `fold_in(key, epoch)`, and the stopping rules read only the history). A run that stopped
is marked finished and is not trained further when called again.
"""

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax

from ._dynamics import relax
from ._misc import batch_mean
from ._value_and_grad import value_and_grad


@dataclasses.dataclass(frozen=True)
class Stopping:
    """The seed notes' stopping criteria (any one stops training; `None` disables one):

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


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jtu.tree_leaves(tree)))


def _batch_grad(params, static, xb, yb, objective, estimator, l2, options):
    net = eqx.combine(params, static)

    def one(x, t):
        return value_and_grad(net, x, t, objective=objective, estimator=estimator, **options)

    losses, grads, info = jax.vmap(one)(xb, yb)
    grads = batch_mean(grads)
    if l2:
        grads = jtu.tree_map(lambda g, p: g + l2 * p, grads, params)
    return jnp.mean(losses), grads, jnp.mean(info["converged"].astype(losses.dtype))


# Module level, with everything as arguments: fits with equal settings share one compilation
# (equinox hashes the non-array arguments: the optimiser, objective, options).
@eqx.filter_jit
def _epoch(params, opt_state, key, X, Y, static, objective, estimator, optimizer, l2, n_batches, batch_size, options):
    perm = jr.permutation(key, X.shape[0])[: n_batches * batch_size].reshape(n_batches, batch_size)

    def step(carry, idx):
        params, opt_state = carry
        loss, grads, conv = _batch_grad(params, static, X[idx], Y[idx], objective, estimator, l2, options)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (loss, _tree_norm(grads), conv)

    (params, opt_state), (loss, gnorm, conv) = jax.lax.scan(step, (params, opt_state), perm)
    return params, opt_state, jnp.mean(loss), jnp.mean(gnorm), jnp.mean(conv)


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
    **options,
):
    """Trains `net` on `train = (X, Y)` with mini-batch gradients from `estimator`.

    **Arguments:**

    - `net`: the network; its inexact-array leaves are trained.
    - `train`: `(X, Y)`, `X` `(N, n_in)`, `Y` the targets the objective's loss takes
      (one-hot floats for `squared_error`, integer labels for `softmax_cross_entropy`).
    - `objective`, `estimator`: as for `nd.value_and_grad`.
    - `optimizer`: an optax transformation (`nd.config.optimizer("sgd", lr, momentum=0.9)`).
    - `epochs`, `batch_size`: `N // batch_size` mini-batches per epoch, reshuffled each epoch
      (a remainder is dropped for that epoch).
    - `key`: the shuffling key.
    - `valid`, `test`: `(X, labels)` with integer labels, for accuracies after each epoch.
    - `l2`: weight decay, adds `l2 * w` to the gradient (the gradient of `nd.losses.l2_penalty`).
    - `stopping`: a `Stopping`.
    - `run`: an `nd.runs.RunDir`: rows go to `metrics.jsonl`, checkpoints every epoch, resume.
    - `progress`: a tqdm bar over epochs (process 0 only).
    - `log_extra`: columns added to every row (e.g. the estimator's name and the seed).
    - `**options`: integration options passed to every relaxation.

    **Returns:** `(net, history)`; `history` is a list of per-epoch rows: `epoch`,
    `train_loss`, `grad_norm`, `converged_rate` (the fraction of examples whose forward and
    estimator solves converged), `valid_accuracy`, `test_accuracy`, `seconds`, and
    `stopped` (the criterion that stopped training, on the last row).

    !!! warning

        The returned network is the last epoch's. Early stopping's model selection (the
        epoch where the validation accuracy peaked) is read from `history`: checkpoint that
        epoch's parameters yourself if you need them.
    """
    X, Y = jnp.asarray(train[0]), jnp.asarray(train[1])
    n = X.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples: lower batch_size.")
    n_batches = n // batch_size
    params, static = eqx.partition(net, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    history, start = [], 0
    if run is not None:
        restored, meta = run.checkpoint((params, opt_state))
        if restored is not None:
            params, opt_state = restored
            history, start = meta["history"], meta["step"]
            run.replace_rows(history)  # rows a killed run logged after its last checkpoint go
            if meta.get("finished"):
                return eqx.combine(params, static), history

    bar = None
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc=type(estimator).__name__, leave=False, disable=None)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        params, opt_state, loss, gnorm, conv = _epoch(
            params, opt_state, jr.fold_in(key, epoch), X, Y, static, objective, estimator, optimizer, l2, n_batches,
            batch_size, options,
        )
        current = eqx.combine(params, static)
        row = dict(epoch=epoch + 1, train_loss=float(loss), grad_norm=float(gnorm), converged_rate=float(conv))
        if valid is not None:
            row["valid_accuracy"] = accuracy(current, *valid, **options)
        if test is not None:
            row["test_accuracy"] = accuracy(current, *test, **options)
        row["seconds"] = time.perf_counter() - t0
        row.update(log_extra or {})
        history.append(row)
        reason = stop_reason(history, stopping)
        if reason is None and epoch + 1 == epochs:
            reason = "epochs"
        if reason is not None:
            row["stopped"] = reason
        if run is not None:
            # The checkpoint first: a kill before the log line loses nothing (resume rewrites
            # metrics.jsonl from the checkpoint's history).
            run.save_checkpoint((params, opt_state), dict(step=epoch + 1, history=history, finished=reason is not None))
            run.log(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=row.get("valid_accuracy", float("nan")))
        if reason is not None:
            break
    if bar is not None:
        bar.close()
    return eqx.combine(params, static), history


def transition_init(net, X, *, scale: float = 1.0):
    """Rescales the input-side weights of `net` so that the induced local fields (the
    pre-activations) on the data `X` have standard deviation `scale`: seed 003's rule, "the
    standard deviation of the induced local fields lies at the transition" between the
    linear and saturated parts of the activation (about 1 for logistic and tanh).

    - `Layered`: each layer in turn, on the activities of the (rescaled) layer below, so every
      layer's fields have standard deviation `scale` over the data.
    - networks with input weights `U` (`CTRNN`, `Hopfield`, and the seed-004 families): `U`,
      so the input drive `U x` has standard deviation `scale`; the recurrent weights keep
      their `gain`, which sets the dynamics' stability.

    Call it with the training inputs only (after preprocessing).

    **Returns:** the rescaled network.
    """
    from .networks import Layered

    X = jnp.asarray(X)
    if isinstance(net, Layered):
        weights, below = list(net.weights), X
        for i, (W, b, f) in enumerate(zip(net.weights, net.biases, net.activations)):
            z = below @ W.T
            s = jnp.std(z)
            W = W * jnp.where(s > 0, scale / s, 1.0).astype(W.dtype)
            weights[i] = W
            below = jax.vmap(f)(below @ W.T + b[None])
        return eqx.tree_at(lambda m: m.weights, net, tuple(weights))
    if hasattr(net, "U") and eqx.is_inexact_array(net.U):
        s = jnp.std(X @ net.U.T)
        return eqx.tree_at(lambda m: m.U, net, net.U * jnp.where(s > 0, scale / s, 1.0).astype(net.U.dtype))
    raise ValueError(
        f"transition_init does not know the input weights of {type(net).__name__}: it handles Layered "
        "networks and networks with input weights `U`; rescale the weights yourself."
    )


def one_hot_targets(y, k: int, low: float = 0.0, high: float = 1.0):
    """Integer labels to float targets for a squared-error readout (EP's usual choice)."""
    return low + (high - low) * jax.nn.one_hot(jnp.asarray(y), k)
