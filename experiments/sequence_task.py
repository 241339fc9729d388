"""Train a recurrent network (a CTRNN by default) on a sequence task with several trajectory estimators (full BPTT against
truncated BPTT, RTRL), fresh sequences every step.

    python -m experiments.sequence_task --config configs/copy_task.yaml [--quick] [--out DIR]

Writes `summary.csv` (per estimator and seed: final loss and recall accuracy, `step_seconds`
the wall time of one training step after compilation, `step_peak_bytes` the compiled step's
memory: XLA's temporaries + arguments + outputs), `metrics.jsonl` (loss every `log_every`
steps) and `figures/training.png`. Each (estimator, seed) is a resumable sub-run
(`<out>/<estimator>-seed<k>/`) of the training engine, `nd.training.train_loop`, with the
step of `nd.training.make_train_step` (the batch gradient, `nd.batch_value_and_grad`),
checkpointed every `log_every` steps: run the same command again after an interruption to
continue. `tensorboard: true` also writes TensorBoard event files into each sub-run. Each
sub-run keeps its trained network: `experiments.sequence_task.load_network("<out>/<estimator>-seed<k>")`
returns it with the task's data, and `score` measures it as the run did.
"""

import dataclasses
import sys
import time
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd
import neurodyn.plotting as ndp
from neurodyn import config as ndc
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class Task:
    name: str = ndc.field(
        "copy",
        help="the task: generated (copy, adding, delayed_xor) or a data set read as sequences (mnist1d: the "
        "40 values one per step, the class at the last step)",
        choices=("copy", "adding", "delayed_xor", "mnist1d"),
    )
    length: int = ndc.field(4, help="copy: symbols to recall", ge=1)
    n_symbols: int = ndc.field(4, help="copy: alphabet size", ge=2)
    delay: int = ndc.field(4, help="copy, delayed_xor: steps between storing and recalling", ge=1)
    T: int = ndc.field(20, help="adding: sequence length", ge=2)


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = ndc.field("sequence_task", help="the experiment module (experiments.<experiment>)")
    task: Task = ndc.field(Task(), help="the sequence task (fresh sequences every step)")
    network: dict[str, Any] = ndc.field(
        default_factory=lambda: {"kind": "ctrnn", "n": 64, "activation": "tanh", "gain": 0.9},
        help="{kind: network class, **its constructor arguments}; n_in, n_out (from the task) and key are "
        "passed by the experiment",
        spec="networks",
    )
    estimators: dict[str, Any] = ndc.field(
        default_factory=lambda: {"bptt": {"kind": "BPTT"}},
        help="name -> {kind: estimator class, **arguments}; each name is a sub-run folder",
        spec="estimators",
        names=True,
        nonempty=True,
    )
    learning_rate: float = ndc.field(3e-3, help="Adam's learning rate", gt=0)
    clip_norm: float | None = ndc.clip_norm_field()
    schedule: str = ndc.schedule_field()
    warmup_steps: int = ndc.warmup_steps_field()
    final_fraction: float = ndc.final_fraction_field()
    steps: int = ndc.field(2000, help="training steps", ge=1)
    batch_size: int = ndc.field(32, help="sequences per step", ge=1)
    log_every: int = ndc.field(50, help="evaluate, log and checkpoint every this many steps", ge=1)
    seeds: tuple[int, ...] = ndc.field((0,), help="one run per seed", ge=0, nonempty=True)
    tensorboard: bool = ndc.field(
        False, help='also write TensorBoard event files into each sub-run (pip install -e ".[tb]")'
    )


def mnist1d_sequences():
    """MNIST-1D's published training and test sets as sequences: `xs (N, 40, 1)` (one value per
    step), `ys (N, 40, 10)` (the one-hot class at the last step, zero before), `w (N, 40)`
    (one-hot on the last step)."""
    try:
        X, y = nd.data.mnist1d()
    except ImportError as e:
        raise ndc.ConfigError(str(e)) from None
    N, T = X.shape
    xs = X[:, :, None]
    ys = np.zeros((N, T, 10), np.float32)
    ys[:, -1] = np.eye(10, dtype=np.float32)[y]
    w = np.zeros((N, T), np.float32)
    w[:, -1] = 1
    n_train = int(0.8 * N)  # the generator's split: 4000 training, 1000 test examples
    return (xs[:n_train], ys[:n_train], w[:n_train]), (xs[n_train:], ys[n_train:], w[n_train:])


def sampler(task: Task, train=None):
    """`sample(key) -> (xs, ys, w)`, one sequence: a fresh one of a generated task, or a
    training example drawn uniformly from a data set (`train`, arrays with a leading axis)."""
    if train is not None:
        arrays = tuple(jnp.asarray(a) for a in train)
        return lambda k: tuple(a[jr.randint(k, (), 0, arrays[0].shape[0])] for a in arrays)
    if task.name == "copy":
        return lambda k: nd.data.sequences.copy_task(k, task.length, task.n_symbols, task.delay)
    if task.name == "adding":
        return lambda k: nd.data.sequences.adding_problem(k, task.T)
    if task.name == "delayed_xor":
        return lambda k: nd.data.sequences.delayed_xor(k, task.delay)
    raise ndc.ConfigError(f"unknown task '{task.name}' (copy, adding, delayed_xor, mnist1d)")


def step_memory(compiled) -> int | None:
    """Bytes a compiled step needs at its peak, as XLA reports it: temporaries plus arguments
    plus outputs (`None` where the backend reports nothing)."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if stats is None:
        return None
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes)


# Every rollout of this experiment, in training and evaluation: Euler, one step per time unit.
ROLLOUT = dict(solver=diffrax.Euler(), dt0=1.0)


def predict(net, xs):
    """The network's outputs `(B, T, n_out)` at steps 1..T of a batch of sequences `xs (B, T, n_in)`."""
    T = xs.shape[1]
    return jax.vmap(lambda x: nd.rollout(net, x, np.arange(1, T + 1), **ROLLOUT)[0])(xs)


def score(net, xs, ys, w, *, classify: bool):
    """The run's metric on a batch `(xs, ys, w)`: with `classify`, the accuracy of the argmax
    over the steps weighted by `w` (the recall or test accuracy); otherwise the `w`-weighted
    mean squared error (`test_mse`)."""
    preds = predict(net, xs)
    if classify:
        hit = (jnp.argmax(preds, -1) == jnp.argmax(ys, -1)).astype(w.dtype)
        return jnp.sum(hit * w) / jnp.sum(w)
    return jnp.sum(w[..., None] * (preds - ys) ** 2) / jnp.sum(w)


def is_classification(task: Task) -> bool:
    """Whether the task is scored by accuracy (copy, mnist1d) rather than squared error."""
    return task.name in ("copy", "mnist1d")


def task_data(task: Task):
    """`(sample, test)`: `sample(key) -> (xs, ys, w)` draws one training sequence; `test` is a
    data set's test split `(xs, ys, w)` (arrays with a leading axis), or `None` for a generated
    task (the run scores 256 fresh sequences drawn with `jr.split(jr.PRNGKey(999), 256)`)."""
    train, test = mnist1d_sequences() if task.name == "mnist1d" else (None, None)
    return sampler(task, train), test


def load_network(path):
    """The network a `sequence_task` sub-run trained, with its task.

    `path`: a finished sub-run, `<out>/<estimator>-seed<k>/` (its network is saved when it
    ends). **Returns** `(net, (sample, test), info)`: the network after its last step,
    `task_data`'s sampler and test split, and `info` (`seed`, `step`, `classify`). For
    example, for a generated task,
    `score(net, *jax.vmap(sample)(jr.split(jr.PRNGKey(999), 256)), classify=info["classify"])`
    is the run's last recall accuracy (or `test_mse`). Nothing in the directory is written."""
    run = RunDir.reader(path, ": pass a sub-run of experiments.sequence_task, <out>/<estimator>-seed<k>")
    cfg = run.read_config(Config)
    info = run.network_info()
    like = ndc.build_network(cfg.network, n_in=info["n_in"], n_out=info["n_out"], key=jr.PRNGKey(info["seed"]))
    return (
        run.load_network(like),
        task_data(cfg.task),
        dict(seed=info["seed"], step=info["step"], classify=is_classification(cfg.task)),
    )


def make_optimizer(cfg: Config):
    """Adam at the config's learning rate, its schedule over `steps`, clipped if asked."""
    return ndc.optimizer_from(cfg, "adam", cfg.learning_rate, total_steps=cfg.steps)


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    estimators = {
        name: ndc.build_object(spec, f"estimators.{name}.", family="estimators")
        for name, spec in cfg.estimators.items()
    }
    opt = make_optimizer(cfg)  # before the run directory: a schedule that cannot run leaves nothing
    run = RunDir(args.out, cfg)
    sample, test = task_data(cfg.task)
    xs0, ys0, w0 = sample(jr.PRNGKey(0))
    T, n_in, n_out = xs0.shape[0], xs0.shape[1], ys0.shape[1]
    classify = is_classification(cfg.task)
    metric_name = "test_accuracy" if classify else "test_mse"
    loss = nd.losses.softmax_cross_entropy if classify else nd.losses.squared_error
    rows, curves = [], []
    for seed in cfg.seeds:
        for name, est in estimators.items():
            net = ndc.build_network(cfg.network, n_in=n_in, n_out=n_out, key=jr.PRNGKey(seed))
            params, static = eqx.partition(net, eqx.is_inexact_array)
            # Each sequence has its own step weights w (B, T): the batch gradient's weights.
            objective = nd.Trajectory(loss, np.arange(1, T + 1))
            step = nd.training.make_train_step(objective, est, opt, **ROLLOUT)
            opt_state = step.init(params)
            key = jr.PRNGKey(100 + seed)

            def train_step(params, opt_state, i, step=step, static=static, key=key):
                # The data of step i derives from fold_in(key, i): a resumed run sees the same batches.
                xs, ys, w = jax.vmap(sample)(jr.split(jr.fold_in(key, i), cfg.batch_size))
                params, opt_state, lval, _ = step(params, opt_state, static, xs, ys, w)
                return params, opt_state, lval / jnp.mean(jnp.sum(w, -1))  # the loss per weighted step

            # Compiled once, ahead of time: its memory is read from the executable, and every
            # timed step below runs compiled code.
            compiled = jax.jit(train_step).lower(params, opt_state, jnp.asarray(0, jnp.int32)).compile()
            peak_bytes = step_memory(compiled)

            @eqx.filter_jit
            def evaluate(params, key, test, static=static):
                # A data set: its test set (an argument: no constant folding); a generated task: 256 fresh sequences.
                xs, ys, w = jax.vmap(sample)(jr.split(key, 256)) if test is None else test
                return score(eqx.combine(params, static), xs, ys, w, classify=classify)

            def advance(state, u, compiled=compiled):
                params, opt_state = state
                first, last = u * cfg.log_every, min((u + 1) * cfg.log_every, cfg.steps)
                t0 = time.perf_counter()
                for i in range(first, last):
                    params, opt_state, lval = compiled(params, opt_state, jnp.asarray(i, jnp.int32))
                lval = float(lval)  # waits for the last step
                seconds = time.perf_counter() - t0
                return (params, opt_state), dict(epoch=last, train_loss=lval, step_seconds=seconds / (last - first))

            # Each (estimator, seed) is a resumable sub-run of the training engine (nd.training.train_loop),
            # checkpointed every log_every steps.
            sub = RunDir(run.path / f"{ndc.check_name(name, 'estimators', key=True)}-seed{seed}", cfg)
            units = -(-cfg.steps // cfg.log_every)
            (params, opt_state), history = nd.training.train_loop(
                advance,
                (params, opt_state),
                units,
                run=sub,
                evaluate=lambda state, evaluate=evaluate: {
                    metric_name: float(evaluate(state[0], jr.PRNGKey(999), test))
                },
                log_extra=dict(part="training", estimator=name, seed=seed),
                tag=f"{name}/{seed}",
                unit="step",
                total=cfg.steps,
                interval=f"{cfg.log_every} steps",
                steps=lambda u: min((u + 1) * cfg.log_every, cfg.steps) - u * cfg.log_every,
                tensorboard=cfg.tensorboard,
            )
            # Kept for load_network: the parameters after the last step, and what rebuilding the network needs.
            sub.save_network(eqx.combine(params, static), seed=seed, n_in=n_in, n_out=n_out, step=cfg.steps)
            last = history[-1]
            curves += history
            timed = [r["step_seconds"] for r in history if r.get("step_seconds") is not None]
            rows.append(
                dict(
                    estimator=name,
                    seed=seed,
                    steps=cfg.steps,
                    train_loss=last["train_loss"],
                    **{
                        ("test_mse" if not classify else "recall_accuracy" if test is None else "test_accuracy"): last[
                            metric_name
                        ]
                    },
                    # Per training step after compilation (the median over the logged intervals),
                    # and the compiled step's memory (temp + arguments + outputs; None where the
                    # backend does not report it).
                    step_seconds=float(np.median(timed)) if timed else None,
                    step_peak_bytes=peak_bytes,
                )
            )
            print(
                f"{name} seed {seed}: loss {last['train_loss']:.4f}, {metric_name} {last[metric_name]:.4f}, "
                f"{1e3 * rows[-1]['step_seconds']:.3g} ms/step"
                + (f", {peak_bytes / 2**20:.3g} MiB per compiled step" if peak_bytes is not None else ""),
                file=sys.stderr,
            )
    run.replace_rows(curves)
    run.write_summary(rows)
    ndp.save(ndp.training_curves(curves, metrics=("train_loss", metric_name)), run.figures / "training")
    for r in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
