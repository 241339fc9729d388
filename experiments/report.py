"""Tabulate and plot finished runs side by side.

    python -m experiments.report RUN_DIR [RUN_DIR ...] [--out DIR] [--metric NAME]

Each RUN_DIR is a run directory written by an experiment (`experiments.train`,
`compare_estimators`, `sequence_task`, `online_rtrl`, `sweep`), or one of its sub-runs
(`<out>/<estimator>-seed<k>/`). The report reads each one's `config.yaml`, `metrics.jsonl`
and `summary.csv` (read-only: no lock is taken and nothing is written into a run) and writes,
in `--out` (default `runs/report`):

- `report.md` (also printed) and `report.csv`: one row per row of each run's `summary.csv`
  (a sub-run without one: its last logged row per estimator and seed), with the run's name and
  ONLY the settings that differ between the runs (the configs flattened to dotted keys);
- `figures/curves.{png,pdf}`: the learning curves overlaid, one colour per (run, estimator),
  the mean over seeds with a band from the lowest to the highest seed; the training loss and
  `--metric` (default: the first of test_accuracy, test_mse, valid_accuracy logged); for
  sweeps (no curves), `figures/sweep.{png,pdf}`: `--metric` against the learning rate.

A directory that is not a run directory (no `config.yaml`, no `metrics.jsonl` nor
`summary.csv`, unreadable files) ends the command with one line and exit code 2.
"""

import argparse
import csv
import io
import json
import math
import pathlib
import sys
from collections import defaultdict

import numpy as np
import yaml

import neurodyn.plotting as ndp
from neurodyn.runs import atomic_write


DEFAULT_METRICS = ("test_accuracy", "test_mse", "valid_accuracy", "train_loss")


class ReportError(Exception):
    """Bad input: printed as one line, exit code 2."""


def _number(v):
    """A CSV cell as a number where it is one."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and v.strip().lstrip("-").isdigit() else f
    return v


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def read_run(path) -> dict:
    """`{path, config, rows, summary}` of a run directory, read without writing anything."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory")
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise ReportError(f"{path} is not a run directory: it has no config.yaml")
    try:
        doc = yaml.safe_load(cfg_file.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ReportError(
            f"{cfg_file} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ReportError(f"{cfg_file} is not a run's config (no 'config:' mapping)")
    metrics_file, summary_file = path / "metrics.jsonl", path / "summary.csv"
    if not metrics_file.is_file() and not summary_file.is_file():
        raise ReportError(f"{path} holds no results yet: neither metrics.jsonl nor summary.csv")
    rows = []
    if metrics_file.is_file():
        for line in metrics_file.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if isinstance(row, dict):
                rows.append(row)
    summary = []
    if summary_file.is_file():
        try:
            summary = [
                {k: _number(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(summary_file.read_text()))
            ]
        except (csv.Error, UnicodeDecodeError) as e:
            raise ReportError(f"{summary_file} cannot be read: {e}") from None
    if not summary:  # a sub-run: its last logged row per (estimator, seed)
        last = {}
        for r in rows:
            if "epoch" in r:
                last[(str(r.get("estimator", "")), str(r.get("seed", "")))] = r
        summary = [{k: v for k, v in r.items() if k not in ("part", "seconds")} for r in last.values()]
    if not summary and not rows:
        raise ReportError(f"{path} holds no results yet: metrics.jsonl and summary.csv are empty")
    return dict(path=path, config=doc["config"], rows=rows, summary=summary)


def flatten(d, prefix="") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are kept whole (as JSON)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else v
    return out


_MISSING = "-"


def differing_settings(configs: list[dict]) -> tuple[list[str], list[dict]]:
    """The dotted keys whose value is not the same in every config, and each config's values
    of those keys (`-` where a config has no such key)."""
    flat = [flatten(c) for c in configs]
    keys = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    diff = [k for k in keys if len({json.dumps(f.get(k, _MISSING), sort_keys=True) for f in flat}) > 1]
    return diff, [{k: f.get(k, _MISSING) for k in diff} for f in flat]


def run_names(paths: list[pathlib.Path]) -> list[str]:
    """The shortest path suffixes that tell the runs apart."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same directory twice


def table(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """The report's columns and rows: run, the differing settings, then the summary columns."""
    diff, values = differing_settings([r["config"] for r in runs])
    names = run_names([r["path"] for r in runs])
    columns, rows = ["run", *diff], []
    for name, vals, run in zip(names, values, runs):
        for s in run["summary"]:
            columns += [k for k in s if k not in columns]
            rows.append({"run": name, **vals, **s})
    return columns, rows


def _fmt(v) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def markdown(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(columns, rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def curves(runs: list[dict]) -> list[dict]:
    """The learning-curve rows of every run (rows with an `epoch`), each tagged with its run."""
    names = run_names([r["path"] for r in runs])
    out = []
    for name, run in zip(names, runs):
        for r in run["rows"]:
            if "epoch" in r and r.get("kind") != "alignment":
                out.append(dict(r, run=name))
    return out


def pick_metric(rows: list[dict], metric: str | None) -> str | None:
    if metric is not None:
        return metric
    return next((m for m in DEFAULT_METRICS if any(isinstance(r.get(m), (int, float)) for r in rows)), None)


def curves_figure(rows: list[dict], metric: str):
    """Learning curves overlaid: one colour per (run, estimator), mean over seeds, band min..max."""
    metrics = list(
        dict.fromkeys(m for m in ("train_loss", metric) if any(isinstance(r.get(m), (int, float)) for r in rows))
    )
    fig, axes = ndp._subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["run"], str(r.get("estimator", "")))].append(r)
    for ax, m in zip(axes[0], metrics):
        for i, ((run, est), rs) in enumerate(groups.items()):
            by_epoch = defaultdict(list)
            for r in rs:
                v = r.get(m)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    by_epoch[float(r["epoch"])].append(float(v))
            if not by_epoch:
                continue
            e = sorted(by_epoch)
            mean = np.array([np.mean(by_epoch[k]) for k in e])
            color = f"C{i % 10}"
            ax.plot(e, mean, "o-" if len(e) < 30 else "-", ms=3, color=color, label=f"{run} / {est}" if est else run)
            if any(len(by_epoch[k]) > 1 for k in e):
                ax.fill_between(e, [min(by_epoch[k]) for k in e], [max(by_epoch[k]) for k in e], color=color, alpha=0.2)
        ax.set_xlabel("epoch (or training step)")
        ax.set_ylabel(m.replace("_", " "))
        if "loss" in m and all(r[m] > 0 for r in rows if isinstance(r.get(m), (int, float))):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Learning curves (mean over seeds; band: lowest..highest seed)")
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or sub-runs) to compare")
    p.add_argument(
        "--out", default="runs/report", help="where report.md, report.csv and figures/ go (default: runs/report)"
    )
    p.add_argument(
        "--metric",
        default=None,
        help="the metric plotted next to the training loss (default: "
        + ", ".join(DEFAULT_METRICS[:-1])
        + ", whichever is logged first)",
    )
    args = p.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
        out = pathlib.Path(args.out)
        if any(out.resolve() == r["path"].resolve() for r in runs):
            raise ReportError(f"--out {out} is one of the runs: the report never writes into a run directory")
        columns, rows = table(runs)
        crows = curves(runs)
        metric = pick_metric(crows or rows, args.metric)
        if args.metric is not None and not any(args.metric in r for r in crows + rows):
            known = sorted({k for r in crows for k, v in r.items() if isinstance(v, (int, float))} - {"epoch", "seed"})
            raise ReportError(
                f"--metric {args.metric}: no run logged it (logged: {', '.join(known) or 'nothing numeric'})"
            )
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    md = markdown(columns, rows)
    print(md, end="")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.md", md)
    atomic_write(out / "report.csv", to_csv(columns, rows))
    swept = [r for r in rows if _is_number(r.get("learning_rate")) and _is_number(r.get(metric))]
    if crows and metric is not None:
        files = ndp.save(curves_figure(crows, metric), out / "figures" / "curves")
        print(f"wrote {out / 'report.md'}, {out / 'report.csv'} and {files[0]}", file=sys.stderr)
    elif swept:  # sweeps: no learning curves, the metric against the learning rate instead
        group = ("run", "estimator") if len(runs) > 1 else ("estimator",)
        files = ndp.save(
            ndp.sweep_curves(swept, x="learning_rate", metric=metric, group=group), out / "figures" / "sweep"
        )
        print(f"wrote {out / 'report.md'}, {out / 'report.csv'} and {files[0]}", file=sys.stderr)
    else:
        print(
            f"wrote {out / 'report.md'} and {out / 'report.csv'} (no learning curves in these runs: no figure)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
