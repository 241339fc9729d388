"""Train a CTRNN on a sequence task with several trajectory estimators (full BPTT against
truncated BPTT, RTRL), fresh sequences every step.

    python -m experiments.sequence_task --config configs/copy_task.yaml [--quick] [--out DIR]

Writes `summary.csv` (final loss and recall accuracy per estimator), `metrics.jsonl` (loss
every `log_every` steps) and `figures/training.png`. Each (estimator, seed) is a resumable
sub-run (`<out>/<estimator>-seed<k>/`, checkpointed every `log_every` steps): run the same
command again after an interruption to continue.
"""

import dataclasses
import sys
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import neurodyn as nd
import neurodyn.plotting as ndp
from neurodyn import config as ndc
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class Task:
    name: str = "copy"
    length: int = 4
    n_symbols: int = 4
    delay: int = 4
    T: int = 20


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = "sequence_task"
    task: Task = Task()
    n: int = 64
    gain: float = 0.9
    estimators: dict[str, Any] = dataclasses.field(default_factory=lambda: {"bptt": {"kind": "BPTT"}})
    learning_rate: float = 3e-3
    steps: int = 2000
    batch_size: int = 32
    log_every: int = 50
    seeds: tuple[int, ...] = (0,)


def sampler(task: Task):
    if task.name == "copy":
        return lambda k: nd.data.sequences.copy_task(k, task.length, task.n_symbols, task.delay)
    if task.name == "adding":
        return lambda k: nd.data.sequences.adding_problem(k, task.T)
    if task.name == "delayed_xor":
        return lambda k: nd.data.sequences.delayed_xor(k, task.delay)
    raise ndc.ConfigError(f"unknown task '{task.name}' (copy, adding, delayed_xor)")


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    run = RunDir(args.out, cfg)
    sample = sampler(cfg.task)
    xs0, ys0, w0 = sample(jr.PRNGKey(0))
    T, n_in, n_out = xs0.shape[0], xs0.shape[1], ys0.shape[1]
    classify = cfg.task.name == "copy"
    metric_name = "test_accuracy" if classify else "test_mse"
    loss = nd.losses.softmax_cross_entropy if classify else nd.losses.squared_error
    opts = dict(solver=diffrax.Euler(), dt0=1.0)
    estimators = {name: ndc.build_object(spec, f"estimators.{name}.") for name, spec in cfg.estimators.items()}
    opt = optax.adam(cfg.learning_rate)
    rows, curves = [], []
    for seed in cfg.seeds:
        for name, est in estimators.items():
            net = nd.networks.CTRNN(cfg.n, n_in, n_out, nd.activations.tanh, gain=cfg.gain, key=jr.PRNGKey(seed))
            params, static = eqx.partition(net, eqx.is_inexact_array)
            with jax.numpy_dtype_promotion("standard"):
                opt_state = opt.init(params)

            @eqx.filter_jit
            def step(params, opt_state, key, est=est, static=static):
                xs, ys, w = jax.vmap(sample)(jr.split(key, cfg.batch_size))
                net = eqx.combine(params, static)

                def one(x, y, wk):
                    obj = nd.Trajectory(loss, np.arange(1, T + 1), wk)
                    return nd.value_and_grad(net, x, y, objective=obj, estimator=est, **opts)[:2]

                losses, grads = jax.vmap(one)(xs, ys, w)
                grads = nd.batch_mean(grads)
                with jax.numpy_dtype_promotion("standard"):
                    updates, opt_state = opt.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, jnp.mean(losses) / jnp.mean(jnp.sum(w, -1))

            @eqx.filter_jit
            def evaluate(params, key, static=static):
                xs, ys, w = jax.vmap(sample)(jr.split(key, 256))
                net = eqx.combine(params, static)
                preds = jax.vmap(lambda x: nd.rollout(net, x, np.arange(1, T + 1), **opts)[0])(xs)
                if classify:
                    hit = (jnp.argmax(preds, -1) == jnp.argmax(ys, -1)).astype(w.dtype)
                    return jnp.sum(hit * w) / jnp.sum(w)
                return jnp.sum(w[..., None] * (preds - ys) ** 2) / jnp.sum(w)

            # Each (estimator, seed) is a resumable sub-run, checkpointed every log_every steps;
            # the data of step i derives from fold_in(key, i), so a resumed run sees the same batches.
            sub = RunDir(run.path / f"{name}-seed{seed}", cfg)
            restored, meta = sub.checkpoint((params, opt_state))
            history, start = [], 0
            if restored is not None:
                (params, opt_state), history, start = restored, meta["history"], meta["step"]
                sub.replace_rows(history)
            key = jr.PRNGKey(100 + seed)
            for i in range(start, cfg.steps):
                params, opt_state, lval = step(params, opt_state, jr.fold_in(key, i))
                if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.steps:
                    row = dict(part="training", estimator=name, seed=seed, epoch=i + 1, train_loss=float(lval),
                               **{metric_name: float(evaluate(params, jr.PRNGKey(999)))})
                    history.append(row)
                    sub.save_checkpoint((params, opt_state), dict(step=i + 1, history=history))
                    sub.log(row)
            last = history[-1]
            curves += history
            rows.append(dict(estimator=name, seed=seed, steps=cfg.steps, train_loss=last["train_loss"],
                             **{("recall_accuracy" if classify else "test_mse"): last[metric_name]}))
            print(f"{name} seed {seed}: loss {last['train_loss']:.4f}, {metric_name} {last[metric_name]:.4f}", file=sys.stderr)
    run.replace_rows(curves)
    run.write_summary(rows)
    ndp.save(ndp.training_curves(curves, metrics=("train_loss", metric_name)), run.figures / "training")
    for r in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
