"""Online learning with RTRL: a student CTRNN learns to mimic a teacher RNN on one long
stream, its weights updated while the stream runs (no backward pass, no stored history).

    python -m experiments.online_rtrl --config configs/online_rtrl.yaml [--quick] [--out DIR]

Each (sensitivity, seed) stream is saved when it ends; re-running the same command skips
the finished ones. Writes `summary.csv` (running loss over the first and last `window`
steps), `metrics.jsonl` (the running loss along the stream) and `figures/training.png`.
"""

import dataclasses
import sys

import equinox as eqx
import jax.random as jr
import numpy as np
import optax

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
    update_every: int = ndc.field(1, help="update the weights every this many steps", ge=1)
    sensitivities: tuple[str, ...] = ndc.field(
        ("Exact", "SnAp1", "Diagonal"),
        help="RTRL sensitivity kinds (nd.rtrl); each is part of a file name",
        names=True,
        nonempty=True,
    )
    seeds: tuple[int, ...] = ndc.field((0,), help="one stream per seed", ge=0, nonempty=True)
    window: int = ndc.field(300, help="steps of the running loss reported first and last", ge=1)


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    for i, sens in enumerate(cfg.sensitivities):  # every kind checked before the run starts
        ndc.resolve(sens, "sensitivities", f"sensitivities[{i}]")
    run = RunDir(args.out, cfg)
    rows, curves = [], []
    for seed in cfg.seeds:
        teacher = nd.networks.CTRNN(cfg.n_teacher, cfg.n_in, 1, gain=cfg.teacher_gain, key=jr.PRNGKey(1000 + seed))
        xs, ys, _ = nd.data.sequences.teacher_rnn(jr.PRNGKey(2000 + seed), teacher, T=cfg.stream_length)
        for sens in cfg.sensitivities:
            # One stream per (sensitivity, seed), saved when it ends: a re-run skips it.
            done_key = f"rtrl-{sens}-seed{seed}"
            result = run.load_result(done_key) if run.done(done_key) else None
            if result is not None:
                print(f"{done_key}: done already, not recomputed", file=sys.stderr)
            else:
                student = nd.networks.CTRNN(cfg.n_student, cfg.n_in, 1, gain=0.5, key=jr.PRNGKey(seed))
                _, losses = eqx.filter_jit(nd.online.fit_online)(
                    student,
                    xs,
                    ys,
                    optimizer=optax.adam(cfg.learning_rate),
                    update_every=cfg.update_every,
                    sensitivity=ndc.build_object({"kind": sens}, "sensitivities.", family="sensitivities"),
                )
                L = np.asarray(losses)
                w = min(cfg.window, len(L) // 2)
                curve = [
                    dict(
                        part="training",
                        estimator=f"rtrl-{sens}",
                        seed=seed,
                        epoch=i + 1,
                        train_loss=float(np.mean(L[max(0, i - w) : i + 1])),
                    )
                    for i in range(0, len(L), max(len(L) // 50, 1))
                ]
                summary = dict(
                    sensitivity=sens,
                    seed=seed,
                    first_loss=float(L[:w].mean()),
                    last_loss=float(L[-w:].mean()),
                    ratio=float(L[-w:].mean() / L[:w].mean()),
                )
                result = dict(curve=curve, summary=summary)
                run.save_result(done_key, result)  # checksummed; a damaged one is recomputed
                run.mark_done(done_key)
            curves += result["curve"]
            rows.append(result["summary"])
            s = result["summary"]
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
