"""Online learning with RTRL: a student CTRNN learns to mimic a teacher RNN on one long
stream, its weights updated while the stream runs (no backward pass, no stored history).

    python -m experiments.online_rtrl --config configs/online_rtrl.yaml [--quick] [--out DIR]

Each (sensitivity, seed) stream is saved when it ends; re-running the same command skips
the finished ones. Writes `summary.csv` (running loss over the first and last `window`
steps), `metrics.jsonl` (the running loss along the stream) and `figures/training.png`.
"""

import dataclasses
import json
import sys

import equinox as eqx
import jax.random as jr
import numpy as np
import optax

import neurodyn as nd
import neurodyn.plotting as ndp
from neurodyn import config as ndc
from neurodyn.runs import atomic_write, RunDir


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = "online_rtrl"
    n_teacher: int = 8
    n_student: int = 8
    n_in: int = 2
    teacher_gain: float = 0.9
    stream_length: int = 3000
    learning_rate: float = 3e-3
    update_every: int = 1
    sensitivities: tuple[str, ...] = ("Exact", "SnAp1", "Diagonal")
    seeds: tuple[int, ...] = (0,)
    window: int = 300


@ndc.entrypoint
def main(argv=None):
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    run = RunDir(args.out, cfg)
    rows, curves = [], []
    for seed in cfg.seeds:
        teacher = nd.networks.CTRNN(cfg.n_teacher, cfg.n_in, 1, gain=cfg.teacher_gain, key=jr.PRNGKey(1000 + seed))
        xs, ys, _ = nd.data.sequences.teacher_rnn(jr.PRNGKey(2000 + seed), teacher, T=cfg.stream_length)
        for sens in cfg.sensitivities:
            # One stream per (sensitivity, seed), saved when it ends: a re-run skips it.
            done_key = f"rtrl-{sens}-seed{seed}"
            result_file = run.path / "checkpoints" / f"{done_key}.json"
            if run.done(done_key):
                result = json.loads(result_file.read_text())
                print(f"{done_key}: done already, not recomputed", file=sys.stderr)
            else:
                student = nd.networks.CTRNN(cfg.n_student, cfg.n_in, 1, gain=0.5, key=jr.PRNGKey(seed))
                _, losses = eqx.filter_jit(nd.online.fit_online)(
                    student, xs, ys, optimizer=optax.adam(cfg.learning_rate), update_every=cfg.update_every,
                    sensitivity=ndc.build_object({"kind": f"rtrl.{sens}"}, "sensitivities."),
                )
                L = np.asarray(losses)
                w = min(cfg.window, len(L) // 2)
                curve = [dict(part="training", estimator=f"rtrl-{sens}", seed=seed, epoch=i + 1,
                              train_loss=float(np.mean(L[max(0, i - w) : i + 1])))
                         for i in range(0, len(L), max(len(L) // 50, 1))]
                summary = dict(sensitivity=sens, seed=seed, first_loss=float(L[:w].mean()), last_loss=float(L[-w:].mean()),
                               ratio=float(L[-w:].mean() / L[:w].mean()))
                result = dict(curve=curve, summary=summary)
                if run.writer:
                    atomic_write(result_file, json.dumps(result))
                run.mark_done(done_key)
            curves += result["curve"]
            rows.append(result["summary"])
            s = result["summary"]
            print(f"{sens} seed {seed}: online loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}", file=sys.stderr)
    run.replace_rows(curves)
    run.write_summary(rows)
    ndp.save(ndp.training_curves(curves, metrics=("train_loss",), title="Online RTRL: running loss on the stream"), run.figures / "training")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
