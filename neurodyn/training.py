"""Training with any estimator: mini-batches, optax, the seed notes' stopping criteria,
checkpoints every epoch and resume.

```python
net, history = nd.training.fit(net, (X, y), objective=nd.SteadyState(nd.losses.softmax_cross_entropy),
                               estimator=nd.EP(0.1), optimizer=optax.sgd(0.05, momentum=0.9),
                               epochs=20, batch_size=32, key=key, valid=(Xv, yv), run=run_dir)
```

One epoch is one jitted `lax.scan` over mini-batches (the batch gradient is the mean of
`jax.vmap(nd.value_and_grad)` over the batch). A `RunDir` makes it resumable: after every
epoch the parameters, optimiser state and history are checkpointed atomically, and calling
`fit` again with the same arguments continues from the last epoch and ends with the same
result as an uninterrupted run (every epoch's shuffle derives from `fold_in(key, epoch)`).
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
    """The seed notes' stopping criteria (any one stops training):

    - `grad_norm`: the epoch's mean gradient norm falls below this;
    - `rel_loss_change`: the relative change of the training loss per epoch falls below this;
    - `patience`: the validation accuracy has not improved for this many epochs (it peaked).
    `None` disables a criterion."""

    grad_norm: float | None = None
    rel_loss_change: float | None = None
    patience: int | None = None


def accuracy(net, X, y, **options) -> float:
    """Classification accuracy of `argmax(readout(r*))` at the steady state."""

    @eqx.filter_jit
    def predict(net, X):
        r, _ = jax.vmap(lambda x: relax(net, x, **options))(X)
        return jnp.argmax(jax.vmap(net.readout)(r), axis=-1)

    return float(jnp.mean(predict(net, jnp.asarray(X)) == jnp.asarray(y)))


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jtu.tree_leaves(tree)))


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
    """Trains `net` on `train = (X, y)` and returns `(net, history)`.

    `history` is a list of per-epoch rows: `epoch, train_loss, grad_norm, converged_rate,
    valid_accuracy, test_accuracy, seconds` (accuracies for classification targets).
    With `run` (an `nd.runs.RunDir`), rows go to `metrics.jsonl` and training resumes from
    the last checkpoint. `l2` adds `1/2 l2 ||w||^2` (weight decay)."""
    X, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    n = X.shape[0]
    n_batches = max(n // batch_size, 1)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    history, start = [], 0
    if run is not None:
        restored, meta = run.checkpoint((params, opt_state))
        if restored is not None:
            params, opt_state = restored
            history, start = meta["history"], meta["step"]

    def batch_grad(params, xb, yb):
        net = eqx.combine(params, static)

        def one(x, t):
            return value_and_grad(net, x, t, objective=objective, estimator=estimator, **options)

        losses, grads, info = jax.vmap(one)(xb, yb)
        grads = batch_mean(grads)
        if l2:
            grads = jtu.tree_map(lambda g, p: g + l2 * p, grads, params)
        return jnp.mean(losses), grads, jnp.mean(info["converged"].astype(losses.dtype))

    @eqx.filter_jit
    def epoch_fn(params, opt_state, key):
        perm = jr.permutation(key, n)[: n_batches * batch_size].reshape(n_batches, batch_size)

        def step(carry, idx):
            params, opt_state = carry
            loss, grads, conv = batch_grad(params, X[idx], y[idx])
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), (loss, _tree_norm(grads), conv)

        (params, opt_state), (loss, gnorm, conv) = jax.lax.scan(step, (params, opt_state), perm)
        return params, opt_state, jnp.mean(loss), jnp.mean(gnorm), jnp.mean(conv)

    show = progress and jax.process_index() == 0
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc=type(estimator).__name__, leave=False, disable=None)
    best, since_best = -np.inf, 0
    for row in history:
        if row.get("valid_accuracy") is not None:
            best, since_best = (row["valid_accuracy"], 0) if row["valid_accuracy"] > best else (best, since_best + 1)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        params, opt_state, loss, gnorm, conv = epoch_fn(params, opt_state, jr.fold_in(key, epoch))
        current = eqx.combine(params, static)
        row = dict(epoch=epoch + 1, train_loss=float(loss), grad_norm=float(gnorm), converged_rate=float(conv))
        if valid is not None:
            row["valid_accuracy"] = accuracy(current, *valid, **options)
        if test is not None:
            row["test_accuracy"] = accuracy(current, *test, **options)
        row["seconds"] = time.perf_counter() - t0
        row.update(log_extra or {})
        history.append(row)
        if run is not None:
            run.log(row)
            run.save_checkpoint((params, opt_state), dict(step=epoch + 1, history=history))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=row.get("valid_accuracy", float("nan")))
        if _should_stop(history, stopping, best, since_best):
            break
        if row.get("valid_accuracy") is not None:
            best, since_best = (row["valid_accuracy"], 0) if row["valid_accuracy"] > best else (best, since_best + 1)
    if bar is not None:
        bar.close()
    return eqx.combine(params, static), history


def _should_stop(history, stopping: Stopping, best, since_best) -> bool:
    row = history[-1]
    if stopping.grad_norm is not None and row["grad_norm"] < stopping.grad_norm:
        return True
    if stopping.rel_loss_change is not None and len(history) > 1:
        prev = history[-2]["train_loss"]
        if abs(prev - row["train_loss"]) <= stopping.rel_loss_change * abs(prev):
            return True
    if stopping.patience is not None and row.get("valid_accuracy") is not None:
        improved = row["valid_accuracy"] > best
        if not improved and since_best + 1 >= stopping.patience:
            return True
    return False


def one_hot_targets(y, k: int, low: float = 0.0, high: float = 1.0):
    """Integer labels to float targets for a squared-error readout (EP's usual choice)."""
    return low + (high - low) * jax.nn.one_hot(jnp.asarray(y), k)

