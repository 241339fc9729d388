"""Online learning with RTRL: a student CTRNN learns to mimic a teacher RNN on one long
stream, its weights updated while the stream runs (no backward pass, no stored history).

    python -m experiments.online_rtrl --config configs/online_rtrl.yaml [--quick] [--out DIR]

Each (sensitivity, seed) stream is a resumable sub-run (`<out>/rtrl-<sensitivity>-seed<k>/`)
of the training engine (`nd.training.train_loop`): the stream runs in pieces of
`checkpoint_every` steps through `nd.online.online_steps`, the online run's carry checkpointed
after each, so re-running the same command after an interruption continues mid-stream (and
skips finished streams). Writes `summary.csv` (running loss over the first and last `window`
steps), `metrics.jsonl` (the running loss along the stream) and `figures/training.png`.
"""

import dataclasses
import sys

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd
import neurodyn.plotting as ndp
from neurodyn import config as ndc
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = ndc.field("online_rtrl", help="the experiment module (experiments.<experiment>)")
    n_teacher: int = ndc.field(8, help="units of the teacher RNN", ge=1)
    n_student: int = ndc.field(8, help="units of the student CTRNN", ge=1)
    n_in: int = ndc.field(2, help="input channels of the stream", ge=1)
    teacher_gain: float = ndc.field(0.9, help="the teacher's recurrent gain", gt=0)
    stream_length: int = ndc.field(3000, help="steps of the stream", ge=2)
    learning_rate: float = ndc.field(3e-3, help="Adam's learning rate", gt=0)
    clip_norm: float | None = ndc.clip_norm_field()
    schedule: str = ndc.schedule_field()
    warmup_steps: int = ndc.warmup_steps_field()
    final_fraction: float = ndc.final_fraction_field()
    update_every: int = ndc.field(1, help="update the weights every this many steps", ge=1)
    sensitivities: tuple[str, ...] = ndc.field(
        ("Exact", "SnAp1", "Diagonal"),
        help="RTRL sensitivity kinds (nd.rtrl); each is part of a file name",
        names=True,
        nonempty=True,
    )
    seeds: tuple[int, ...] = ndc.field((0,), help="one stream per seed", ge=0, nonempty=True)
    window: int = ndc.field(300, help="steps of the running loss reported first and last", ge=1)
    checkpoint_every: int = ndc.field(
        200, help="steps of the stream between checkpoints (and progress lines); a rerun resumes from the last", ge=1
    )
    tensorboard: bool = ndc.field(
        False, help='also write TensorBoard event files into each sub-run (pip install -e ".[tb]")'
    )


# One compilation per piece length (and sensitivity), shared by every stream.
steps = eqx.filter_jit(nd.online.online_steps)


def make_optimizer(cfg: Config):
    """Adam at the config's learning rate, clipped if asked, its schedule over the stream's
    updates (one every `update_every` inputs)."""
    return ndc.optimizer_from(cfg, "adam", cfg.learning_rate, total_steps=cfg.stream_length // cfg.update_every)


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    for i, sens in enumerate(cfg.sensitivities):  # every kind checked before the run starts
        ndc.resolve(sens, "sensitivities", f"sensitivities[{i}]")
    # Before the run directory (a schedule that cannot run leaves nothing), and one for every
    # stream: a fresh optax optimiser is a new static argument, which would compile again.
    optimizer = make_optimizer(cfg)
    run = RunDir(args.out, cfg)
    rows, curves = [], []
    for seed in cfg.seeds:
        teacher = nd.networks.CTRNN(cfg.n_teacher, cfg.n_in, 1, gain=cfg.teacher_gain, key=jr.PRNGKey(1000 + seed))
        xs, ys, _ = nd.data.sequences.teacher_rnn(jr.PRNGKey(2000 + seed), teacher, T=cfg.stream_length)
        T = xs.shape[0]
        for sens in cfg.sensitivities:
            student = nd.networks.CTRNN(cfg.n_student, cfg.n_in, 1, gain=0.5, key=jr.PRNGKey(seed))
            kw = dict(
                optimizer=optimizer,
                update_every=cfg.update_every,
                sensitivity=ndc.build_object({"kind": sens}, "sensitivities.", family="sensitivities"),
            )
            # The training state is the online run's carry (parameters, optimiser state, r and p, the
            # accumulated gradient, the step) and the losses so far: checkpointed between pieces of the
            # stream by the training engine, so an interrupted stream resumes where it stopped.
            state = dict(
                carry=nd.online.online_init(student, xs[0], optimizer=kw["optimizer"], sensitivity=kw["sensitivity"]),
                losses=jnp.zeros((T,), xs.dtype),
            )
            w = min(cfg.window, T // 2)

            def advance(state, i, student=student, xs=xs, ys=ys, kw=kw, w=w):
                a, b = i * cfg.checkpoint_every, min((i + 1) * cfg.checkpoint_every, T)
                carry, piece = steps(student, state["carry"], xs[a:b], ys[a:b], **kw)
                losses = state["losses"].at[a:b].set(piece)
                return dict(carry=carry, losses=losses), dict(
                    epoch=b, train_loss=float(jnp.mean(losses[max(0, b - w) : b]))
                )

            sub = RunDir(run.path / f"rtrl-{sens}-seed{seed}", cfg)
            state, _ = nd.training.train_loop(
                advance,
                state,
                -(-T // cfg.checkpoint_every),
                run=sub,
                log_extra=dict(part="training", estimator=f"rtrl-{sens}", seed=seed),
                tag=f"rtrl-{sens}/{seed}",
                unit="step",
                total=T,
                interval=f"{cfg.checkpoint_every} steps",
                steps=lambda i: min((i + 1) * cfg.checkpoint_every, T) - i * cfg.checkpoint_every,
                tensorboard=cfg.tensorboard,
            )
            L = np.asarray(state["losses"])
            curves += [
                dict(
                    part="training",
                    estimator=f"rtrl-{sens}",
                    seed=seed,
                    epoch=i + 1,
                    train_loss=float(np.mean(L[max(0, i - w) : i + 1])),
                )
                for i in range(0, len(L), max(len(L) // 50, 1))
            ]
            s = dict(
                sensitivity=sens,
                seed=seed,
                first_loss=float(L[:w].mean()),
                last_loss=float(L[-w:].mean()),
                ratio=float(L[-w:].mean() / L[:w].mean()),
            )
            rows.append(s)
            print(f"{sens} seed {seed}: online loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}", file=sys.stderr)
    run.replace_rows(curves)
    run.write_summary(rows)
    ndp.save(
        ndp.training_curves(curves, metrics=("train_loss",), title="Online RTRL: running loss on the stream"),
        run.figures / "training",
    )
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
