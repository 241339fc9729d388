"""The figures researchers publish when comparing gradient estimators.

Every function takes tidy rows (dicts, as in a run's `summary.csv` / `metrics.jsonl`) and
returns a matplotlib `Figure`; `save(fig, path)` writes PNG and PDF. Each figure is readable
on its own: title, axis labels with units, legend.

Figures are `matplotlib.figure.Figure` objects (the object-oriented API, rendered by Agg
when saved): importing this module leaves matplotlib's backend and pyplot's figure list
alone. `save` writes each file atomically (a temporary file in the same directory, then
`os.replace`): a killed run never leaves a truncated or empty figure.
"""

import math
import os
import pathlib
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


_STYLE = {"bptt": "C0", "rbp": "C1", "ep": "C2", "rtrl": "C3"}


def _color(name: str):
    for key, c in _STYLE.items():
        if name.lower().startswith(key):
            return c
    return None


def _colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per name, distinct while there are colours left: the first name of a family
    (bptt, rbp, ep, rtrl) takes the family's colour, every other name the next free one, so
    variants of one family (`rtrl`, `rtrl-snap1`, `rtrl-uoro`) stay apart."""
    out, used = {}, set()
    spare = [f"C{k}" for k in (4, 5, 6, 7, 8, 9, 0, 1, 2, 3)]
    for i, name in enumerate(names):
        color = _color(name)
        if color is None or color in used:
            free = [c for c in spare if c not in used]
            color = free[0] if free else f"C{i % 10}"
        used.add(color)
        out[name] = color
    return out


def _subplots(*args, figsize, **kwargs):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save(fig: Figure, path: str | os.PathLike) -> list[str]:
    """Writes `path.png` (150 dpi) and `path.pdf`, each atomically (temporary file in the same
    directory, fsync, `os.replace`; permissions `0o666 & ~umask`); returns the two file names.
    If `fig` came from pyplot it is closed."""
    from .runs import _umask

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    formats: tuple[tuple[str, dict[str, Any]], ...] = (("png", {"dpi": 150}), ("pdf", {}))
    for fmt, kwargs in formats:
        final = path.with_name(f"{path.name}.{fmt}")
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.")
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, format=fmt, bbox_inches="tight", **kwargs)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        out.append(str(final))
    if "matplotlib.pyplot" in sys.modules:  # a pyplot figure stays in pyplot's list until closed
        sys.modules["matplotlib.pyplot"].close(fig)
    return out


def _group(rows: Iterable[Mapping], by: str):
    groups = defaultdict(list)
    for r in rows:
        groups[r[by]].append(r)
    return groups


def fidelity_vs_knob(
    rows: Sequence[Mapping],
    knob: str,
    *,
    metric: str = "rel_error",
    slopes: Mapping[str, float] | None = None,
    logx: bool = True,
    title: str | None = None,
    knob_label: str | None = None,
) -> Figure:
    """`metric` (default: relative error to the exact gradient) against one knob, one line
    per estimator variant (`rows[i]["estimator"]`), log-scaled error axis (and knob axis
    with `logx`). `slopes` maps an estimator name to its theoretical log-log slope, drawn
    as a dashed guide through that line's smallest-knob point."""
    fig, ax = _subplots(figsize=(5.2, 3.9))
    lines = {}
    groups = sorted(_group([r for r in rows if r.get(knob) is not None], "estimator").items())
    colors = _colors([name for name, _ in groups])
    for name, rs in groups:
        rs = sorted(rs, key=lambda r: float(r[knob]))
        xs = np.array([float(r[knob]) for r in rs])
        ys = np.array([max(float(r[metric]), 1e-16) for r in rs])
        color = colors[name]
        ax.plot(xs, ys, "o-", label=name, color=color)
        lines[name] = (xs, ys, color)
    for name, slope_ in (slopes or {}).items():
        if name not in lines:
            continue
        xs, ys, color = lines[name]
        ax.plot(xs, ys[0] * (xs / xs[0]) ** slope_, "--", color=color, alpha=0.6, label=f"theory: slope {slope_:g}")
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(knob_label or knob)
    ax.set_ylabel(
        {"rel_error": "relative error ||g - g*|| / ||g*||", "cosine": "cosine to exact gradient"}.get(metric, metric)
    )
    ax.set_title(title or f"Gradient fidelity against {knob}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def cost_vs_n(rows: Sequence[Mapping], *, title: str | None = None) -> Figure:
    """Wall time and peak memory against the network size `n`, per estimator (log-log)."""
    fig, (ax_t, ax_m) = _subplots(1, 2, figsize=(9.5, 3.8))
    groups = sorted(_group(rows, "estimator").items())
    colors = _colors([name for name, _ in groups])
    for name, rs in groups:
        rs = sorted(rs, key=lambda r: int(r["n"]))
        n = [int(r["n"]) for r in rs]
        ax_t.loglog(n, [1e3 * float(r["time_s"]) for r in rs], "o-", label=name, color=colors[name])
        mem = [r.get("peak_bytes") for r in rs]
        if all(m not in (None, "", "None") for m in mem):
            ax_m.loglog(n, [float(m) / 2**20 for m in mem], "o-", label=name, color=colors[name])
    ax_t.set_xlabel("network size n (units)")
    ax_t.set_ylabel("wall time per batch gradient (ms)")
    ax_t.set_title("Time")
    ax_m.set_xlabel("network size n (units)")
    ax_m.set_ylabel("planned peak memory (MiB)")
    ax_m.set_title("Memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Cost of each estimator against network size")
    fig.tight_layout()
    return fig


def alignment(names: Sequence[str], M: np.ndarray, *, title: str | None = None) -> Figure:
    """The pairwise gradient-alignment matrix: cosine between every two estimators."""
    k = len(names)
    fig, ax = _subplots(figsize=(2.4 + 0.8 * k, 1.0 + 0.7 * k))
    im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{M[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(M[i, j]) > 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_title(title or "Gradient alignment between estimators")
    fig.tight_layout()
    return fig


def training_curves(
    rows: Sequence[Mapping], *, metrics: Sequence[str] = ("train_loss", "test_accuracy"), title: str | None = None
) -> Figure:
    """Training curves per estimator with a band (min..max and mean) over seeds.

    `rows` carry `estimator`, `seed`, `epoch` and the metrics."""
    metrics = [m for m in metrics if any(m in r for r in rows)]
    fig, axes = _subplots(1, max(len(metrics), 1), figsize=(4.8 * max(len(metrics), 1), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups = sorted(_group([r for r in rows if metric in r], "estimator").items())
        colors = _colors([name for name, _ in groups])
        for name, rs in groups:
            by_epoch = defaultdict(list)
            for r in rs:
                by_epoch[int(r["epoch"])].append(float(r[metric]))
            epochs = sorted(by_epoch)
            vals = [by_epoch[e] for e in epochs]
            mean = np.array([np.mean(v) for v in vals])
            lo = np.array([np.min(v) for v in vals])
            hi = np.array([np.max(v) for v in vals])
            c = colors[name]
            ax.plot(epochs, mean, label=name, color=c)
            ax.fill_between(epochs, lo, hi, alpha=0.25, color=c)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        if "loss" in metric and all(float(r[metric]) > 0 for r in rows if metric in r):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Training with each estimator (band: range over seeds)")
    fig.tight_layout()
    return fig


def sweep_curves(
    rows: Sequence[Mapping],
    x: str = "learning_rate",
    metric: str = "test_accuracy",
    group: str | Sequence[str] = "estimator",
    *,
    logx: bool | None = None,
    title: str | None = None,
) -> Figure:
    """A sweep's result: `metric` against the swept value `x`, one line per `group` (a column,
    or several: `("estimator", "hidden")`), the mean over the remaining points at each `x`
    (the seeds) with a band from the lowest to the highest, and the points themselves.

    `rows` are a sweep's tidy rows (`summary.csv` of `experiments.sweep`). Rows without `x` or
    `metric` (or with a non-finite value) are left out. `logx=None` takes a log axis when every
    `x` is positive and they span a factor of 10 or more."""
    cols = (group,) if isinstance(group, str) else tuple(group)

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    data = [r for r in rows if math.isfinite(number(r.get(x))) and math.isfinite(number(r.get(metric)))]
    if not data:
        raise ValueError(f"sweep_curves: no row has both {x!r} and {metric!r} as numbers")
    fig, ax = _subplots(figsize=(5.2, 3.9))
    groups = defaultdict(list)
    for r in data:
        groups[tuple(r.get(c) for c in cols)].append(r)
    ordered = sorted(groups.items(), key=lambda kv: str(kv[0]))
    colors = _colors([str(key[0]) if len(cols) == 1 else str(key) for key, _ in ordered])
    for key, rs in ordered:
        by_x = defaultdict(list)
        for r in rs:
            by_x[number(r[x])].append(number(r[metric]))
        xs = sorted(by_x)
        mean = np.array([np.mean(by_x[v]) for v in xs])
        name = ", ".join(f"{c}={k}" if len(cols) > 1 else str(k) for c, k in zip(cols, key))
        color = colors[str(key[0]) if len(cols) == 1 else str(key)]
        n = max(len(v) for v in by_x.values())
        ax.plot(xs, mean, "o-", color=color, label=f"{name} (mean of {n})" if n > 1 else name)
        if n > 1:
            ax.fill_between(xs, [min(by_x[v]) for v in xs], [max(by_x[v]) for v in xs], color=color, alpha=0.2)
            px = [v for v in xs for _ in by_x[v]]
            ax.scatter(px, [m for v in xs for m in by_x[v]], s=8, color=color, alpha=0.5)
    allx = np.array(sorted({number(r[x]) for r in data}))
    if logx is None:
        logx = bool(np.all(allx > 0) and allx.max() >= 10 * allx.min())
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title=" / ".join(cols), title_fontsize=8)
    ax.set_title(title or f"{metric.replace('_', ' ')} against {x.replace('_', ' ')} (band: range over seeds)")
    fig.tight_layout()
    return fig


def slope(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    ok = np.isfinite(lx) & np.isfinite(ly)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(lx[ok], ly[ok], 1)[0])
