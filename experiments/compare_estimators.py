"""Compare the gradient estimators on one network, one batch, one objective.

    python -m experiments.compare_estimators --config configs/compare_estimators.yaml [--quick] [--out DIR]
    python -m experiments.compare_estimators plot RUN_DIR      # redraw the figures, no recompute

For each part (a steady-state objective, a trajectory objective) it computes the exact
reference gradient (float64: a dense implicit-function-theorem solve, or jax.grad through a
fine RK4 solve), then every estimator variant and every point of the knob sweeps (EP's beta,
RBP's Krylov tolerance and Neumann K, BPTT's truncation h, RTRL's approximation, the number
of UORO draws averaged), and the cost against the network size n (of the steady part's
variants, and of the trajectory part's under `scaling.trajectory_variants`).

A variant of a stochastic estimator (`nd.rtrl.UORO`, whose `sensitivity.key` draws the
random signs) can be averaged over draws, a knob of the harness rather than of the
estimator: a part's `draws: {variant: K}` makes that variant's gradient the mean of `K`
independent draws (keys `key, key + 1, ...`), and a sweep with `knob: draws` shows the error
falling as `1/sqrt(K)`. It writes `summary.csv` (estimator, cosine, rel_error,
sign_agreement, time_s, compile_s, peak_bytes, one column per knob), `metrics.jsonl`
(per-leaf errors too) and the figures in `figures/` (PNG and PDF).
"""

import dataclasses
import functools as ft
import inspect
import json
import sys
import time
from typing import Any

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import neurodyn as nd  # noqa: E402
import neurodyn.fidelity as fid  # noqa: E402
import neurodyn.plotting as ndp  # noqa: E402
from neurodyn import config as ndc  # noqa: E402
from neurodyn._misc import planned_peak_bytes, tree_cast  # noqa: E402
from neurodyn.runs import RunDir  # noqa: E402


def _default_network():
    return {"kind": "hopfield", "n_in": 8, "n_hidden": 24, "n_out": 4, "activation": "logistic", "gain": 0.5}


@dataclasses.dataclass(frozen=True)
class Sweep:
    variant: str = ndc.field(help="the variant whose knob is swept")
    knob: str = ndc.field(help="the argument swept (dotted into nested specs: adjoint.K)")
    values: tuple[Any, ...] = ndc.field(help="the knob's values", nonempty=True)
    slope: float | None = ndc.field(None, help="a theoretical log-log slope to draw")
    log: bool = ndc.field(True, help="log axis for the knob")


@dataclasses.dataclass(frozen=True)
class Part:
    enabled: bool = ndc.field(True, help="run this part")
    network: dict[str, Any] = ndc.field(
        default_factory=_default_network,
        help="{kind: network class, n_in, n_out (the synthetic data's sizes), **constructor arguments}",
    )
    objective: str = ndc.field("steady_state", help="the objective", choices=("steady_state", "trajectory"))
    T: int = ndc.field(8, help="trajectory: time points", ge=1)
    dt: float = ndc.field(1.0, help="trajectory: time between points", gt=0)
    batch: int = ndc.field(16, help="examples in the batch", ge=1)
    variants: dict[str, Any] = ndc.field(
        default_factory=dict, help="name -> {kind: estimator class, **arguments}", spec="estimators", names=True
    )
    sweeps: tuple[Sweep, ...] = ndc.field((), help="knob sweeps of the variants")
    draws: dict[str, int] = ndc.field(
        default_factory=dict,
        help="variant -> K: its gradient is the mean of K independent draws (sensitivity.key = key, key + 1, ...), "
        "for a stochastic sensitivity (rtrl.UORO)",
    )
    measure: tuple[str, ...] = ndc.field(
        (),
        help="the variants measured on their own (default: all; the quick run measures fewer); sweeps may "
        "name any variant",
    )


@dataclasses.dataclass(frozen=True)
class Scaling:
    enabled: bool = ndc.field(True, help="run the cost-against-n part (on the steady part's network)")
    sizes: tuple[int, ...] = ndc.field((16, 32, 64), help="network sizes n", ge=2, nonempty=True)
    batch: int = ndc.field(8, help="examples in the batch", ge=1)
    dtype: str = ndc.field("float32", help="the dtype timed", choices=("float32", "float64"))
    variants: tuple[str, ...] = ndc.field(
        ("bptt", "rbp", "ep-centered", "rtrl"), help="variants of the steady part timed"
    )
    trajectory_variants: tuple[str, ...] = ndc.field(
        (), help="variants of the trajectory part timed against n on the trajectory part's network"
    )
    trajectory_sizes: tuple[int, ...] = ndc.field(
        (), help="network sizes n for trajectory_variants (default: sizes)", ge=2
    )


@dataclasses.dataclass(frozen=True)
class Config:
    experiment: str = ndc.field("compare_estimators", help="the experiment module (experiments.<experiment>)")
    seed: int = ndc.field(0, help="the PRNG seed (network and batch)", ge=0)
    steady: Part = ndc.field(Part(), help="the steady-state part")
    trajectory: Part = ndc.field(Part(enabled=False), help="the trajectory part")
    scaling: Scaling = ndc.field(Scaling(), help="cost against the network size")


def _network_spec(spec: dict, where: str):
    """`(n_in, n_out, constructor spec)` of a part's `network:` mapping."""
    spec = dict(spec)
    n_in, n_out = spec.pop("n_in", 8), spec.pop("n_out", 4)
    for name, v in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ndc.ConfigError(f"'{where}{name}' = {v!r} is out of range: must be an integer >= 1")
    return n_in, n_out, spec


def make_network(spec: dict, key, n: int | None = None, where: str = "network."):
    """Any network class of the registry (`ndc.build_network`); `n` sets its size for the
    scaling part (`n`, or `n_hidden = n - n_out`)."""
    n_in, n_out, spec = _network_spec(spec, where)
    if n is not None:
        params = inspect.signature(ndc.network_class(spec["kind"])).parameters
        if "n" in params:
            spec["n"] = n
        elif "n_hidden" in params:
            spec["n_hidden"] = n - n_out
        else:
            raise ndc.ConfigError(f"scaling: the network '{spec['kind']}' has no size argument n or n_hidden")
    return ndc.build_network(spec, n_in=n_in, n_out=n_out, key=key, where=where)


def check(cfg: Config):
    """Every enabled part's network, sweeps and scaling variants, before any work."""
    for name in ("steady", "trajectory"):
        part = getattr(cfg, name)
        if part.enabled or (name == "steady" and cfg.scaling.enabled):
            _, _, spec = _network_spec(part.network, f"{name}.network.")
            ndc.check_network(spec, f"{name}.network.")
        for sw in part.sweeps:
            if sw.variant not in part.variants:
                raise ndc.ConfigError(
                    f"{name}.sweeps: '{sw.variant}' is not a variant (variants: {', '.join(part.variants)})"
                )
        for v in part.measure:
            if v not in part.variants:
                raise ndc.ConfigError(
                    f"{name}.measure names '{v}', not a variant (variants: {', '.join(part.variants)})"
                )
    if cfg.scaling.enabled:
        for v in cfg.scaling.variants:
            if v not in cfg.steady.variants:
                raise ndc.ConfigError(f"scaling.variants names '{v}', not a variant of the steady part")
        for v in cfg.scaling.trajectory_variants:
            if v not in cfg.trajectory.variants:
                raise ndc.ConfigError(f"scaling.trajectory_variants names '{v}', not a variant of the trajectory part")
    for name in ("steady", "trajectory"):
        part = getattr(cfg, name)
        for v, K in part.draws.items():
            _check_draws(part, v, K, f"{name}.draws.{v}")
        for sw in part.sweeps:
            if sw.knob == "draws":
                for K in sw.values:
                    _check_draws(part, sw.variant, K, f"{name}.sweeps: draws")


def _with_knob(spec: dict, knob: str, value):
    out = json.loads(json.dumps(spec))
    node = out
    *path, last = knob.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _check_draws(part: Part, variant: str, K, where: str):
    if variant not in part.variants:
        raise ndc.ConfigError(f"'{where}' names '{variant}', not a variant (variants: {', '.join(part.variants)})")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ndc.ConfigError(f"'{where}' = {K!r} is out of range: must be an integer >= 1")
    sens = part.variants[variant].get("sensitivity")
    if K > 1 and not (isinstance(sens, dict) and isinstance(sens.get("key", 0), int)):
        raise ndc.ConfigError(
            f"'{where}' = {K}: only an estimator with a random sensitivity and an integer seed "
            "({kind: RTRL, sensitivity: {kind: rtrl.UORO, key: 0}}) has independent draws to average"
        )


def _draws(spec: dict, K: int, where: str):
    """K estimators that differ only in `sensitivity.key` (key, key + 1, ...), stacked: the
    array leaves batched along a leading axis, and the static part."""
    base = spec["sensitivity"].get("key", 0)
    ests = [
        ndc.build_object(_with_knob(spec, "sensitivity.key", base + i), where, family="estimators") for i in range(K)
    ]
    parts = [eqx.partition(e, eqx.is_array) for e in ests]
    return jax.tree.map(lambda *a: jnp.stack(a), *[p[0] for p in parts]), parts[0][1]


def measure_draws(spec, K, where, net, xs, ys, objective, repeats: int = 3) -> dict:
    """`fid.measure` for the mean gradient of K independent draws (vmapped over the keys);
    `draw_grads` holds every draw's gradient (a leading axis of K)."""
    dynamic, static = _draws(spec, K, where)

    @eqx.filter_jit
    def run(dynamic, net, xs, ys):
        def one(d):
            return nd.batch_value_and_grad(net, xs, ys, objective=objective, estimator=eqx.combine(d, static))

        return jax.vmap(one)(dynamic)

    t0 = time.perf_counter()
    loss, draw_grads, info = jax.block_until_ready(run(dynamic, net, xs, ys))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(dynamic, net, xs, ys))
        times.append(time.perf_counter() - t0)
    wall = float(np.median(times))
    return dict(
        loss=float(loss.mean()),
        grads=jax.tree.map(ft.partial(jnp.mean, axis=0), draw_grads),
        draw_grads=draw_grads,
        time_s=wall,
        compile_s=max(first - wall, 0.0),
        peak_bytes=planned_peak_bytes(run, dynamic, net, xs, ys),
        converged_fraction=float(np.mean(np.asarray(info["converged"]))),
    )


def _measure(spec, where, net, xs, ys, objective, K: int = 1):
    if K > 1:
        return measure_draws(spec, K, where, net, xs, ys, objective)
    est = ndc.build_object(spec, where, family="estimators")
    return fid.measure(est, net, xs, ys, objective)


def _objective(part: Part):
    if part.objective == "steady_state":
        return nd.SteadyState(nd.losses.squared_error), None
    if part.objective == "trajectory":
        ts = np.arange(1, part.T + 1) * part.dt
        return nd.Trajectory(nd.losses.squared_error, ts), part.T
    raise ndc.ConfigError(f"objective must be 'steady_state' or 'trajectory', got '{part.objective}'")


def _batch(net, key, B, T):
    kx, ky = jr.split(key)
    if T is None:
        return jr.uniform(kx, (B, net.n_in)), jr.uniform(ky, (B, net.n_out))
    return jr.normal(kx, (B, T, net.n_in)), jr.normal(ky, (B, T, net.n_out))


def _row(part_name, name, m, stats, **knobs):
    return dict(
        part=part_name,
        estimator=name,
        cosine=stats["cosine"],
        rel_error=stats["rel_error"],
        sign_agreement=stats["sign_agreement"],
        time_s=m["time_s"],
        compile_s=m["compile_s"],
        peak_bytes=m["peak_bytes"],
        converged_fraction=m["converged_fraction"],
        **knobs,
    )


def run_part(part_name: str, part: Part, seed: int, run: RunDir):
    key = jr.PRNGKey(seed)
    knet, kdata = jr.split(key)
    net = make_network(part.network, knet, where=f"{part_name}.network.")
    objective, T = _objective(part)
    xs, ys = _batch(net, kdata, part.batch, T)
    t0 = time.perf_counter()
    _, ref = fid.batch_reference(net, xs, ys, objective)
    print(f"[{part_name}] exact reference in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    rows, grads, measured = [], {}, {}

    def evaluate(name, spec, K=1, **knobs):
        # A sweep point equal to a variant already measured (EP's beta = its variant's) is not
        # measured twice: every measurement compiles.
        memo = json.dumps(spec, sort_keys=True) + f" x{K}"
        if memo not in measured:
            measured[memo] = _measure(spec, f"{part_name}.variants.{name}.", net, xs, ys, objective, K)
        m = measured[memo]
        stats = fid.compare(m["grads"], ref)
        row = _row(part_name, name, m, stats, **knobs)
        run.log(dict(row, **{k: v for k, v in stats.items() if k not in row}))
        rows.append(row)
        print(
            f"[{part_name}] {name} {knobs or ''}: cosine {stats['cosine']:.6f}, rel err {stats['rel_error']:.2e}, {1e3 * m['time_s']:.2f} ms",
            file=sys.stderr,
        )
        return m

    for name, spec in part.variants.items():
        if not part.measure or name in part.measure:
            grads[name] = evaluate(name, spec, part.draws.get(name, 1))["grads"]
    for sw in part.sweeps:
        if sw.variant not in part.variants:
            raise ndc.ConfigError(
                f"sweep over '{sw.knob}' names the unknown variant '{sw.variant}' (variants: {', '.join(part.variants)})"
            )
        column = sw.knob.replace(".", "_")
        if sw.knob == "draws" and max(sw.values) > 1:
            # One vmapped run of the largest K serves every point: the mean of its first K
            # draws (keys key .. key + K - 1, as a run of K would draw); the time reported
            # for a point is that run's scaled by K / K_max, its memory the run's.
            spec, big = part.variants[sw.variant], max(sw.values)
            m_all = _measure(spec, f"{part_name}.variants.{sw.variant}.", net, xs, ys, objective, big)
            for v in sw.values:
                memo = json.dumps(spec, sort_keys=True) + f" x{v}"
                if memo not in measured:
                    grads_v = jax.tree.map(lambda a, v=v: jnp.mean(a[:v], axis=0), m_all["draw_grads"])
                    measured[memo] = dict(m_all, grads=grads_v, time_s=m_all["time_s"] * v / big)
        for v in sw.values:
            if sw.knob == "draws":
                spec, K = part.variants[sw.variant], v
            else:
                spec, K = _with_knob(part.variants[sw.variant], sw.knob, v), part.draws.get(sw.variant, 1)
            evaluate(sw.variant, spec, K, **{column: v, "sweep": column})
    names, M = fid.alignment_matrix(grads)
    run.log(dict(part=part_name, kind="alignment", names=names, matrix=M.tolist()))
    return rows


def run_scaling(cfg: Config, run: RunDir):
    sc = cfg.scaling
    rows = run_scaling_part(cfg, run, "steady", sc.variants, sc.sizes, "scaling")
    if sc.trajectory_variants:
        sizes = sc.trajectory_sizes or sc.sizes
        rows += run_scaling_part(cfg, run, "trajectory", sc.trajectory_variants, sizes, "scaling-trajectory")
    return rows


def run_scaling_part(cfg: Config, run: RunDir, part_name: str, variants, sizes, row_part: str):
    sc = cfg.scaling
    dtype = jnp.float32 if sc.dtype == "float32" else jnp.float64
    rows = []
    part = getattr(cfg, part_name)
    objective, T = _objective(part)
    for n in sizes:
        net = make_network(part.network, jr.PRNGKey(cfg.seed), n=n, where=f"{part_name}.network.")
        net = tree_cast(net, dtype)
        xs, ys = _batch(net, jr.PRNGKey(cfg.seed + 1), sc.batch, T)
        xs, ys = xs.astype(dtype), ys.astype(dtype)
        for name in variants:
            if name not in part.variants:
                raise ndc.ConfigError(f"scaling names '{name}', not a variant of the {part_name} part")
            where = f"{part_name}.variants.{name}."
            m = _measure(part.variants[name], where, net, xs, ys, objective, part.draws.get(name, 1))
            row = dict(
                part=row_part,
                estimator=name,
                n=n,
                time_s=m["time_s"],
                compile_s=m["compile_s"],
                peak_bytes=m["peak_bytes"],
                converged_fraction=m["converged_fraction"],
                dtype=sc.dtype,
            )
            run.log(row)
            rows.append(row)
            print(f"[{row_part}] n={n} {name}: {1e3 * m['time_s']:.2f} ms, peak {m['peak_bytes']} B", file=sys.stderr)
    return rows


# Theoretical log-log slopes drawn on the fidelity figures, by knob and estimator variant.
THEORY = {
    "beta": {"ep-one-sided": 1.0, "ep-centered": 2.0, "ep-holomorphic": 4.0},
    "adjoint_rtol": {"rbp-krylov": 1.0},
    "draws": {"rtrl-uoro": -0.5},
}
# Knobs whose error falls as a power law (log axis); the others (K, h) fall geometrically.
LOG_KNOBS = {"beta", "adjoint_rtol", "draws"}
SCALING = {"scaling": "steady state", "scaling-trajectory": "trajectory"}


def plot(run_dir) -> list[str]:
    """Redraws every figure from `metrics.jsonl`, without recomputing."""
    run = RunDir(run_dir)
    rows = run.rows()
    files = []
    for part in sorted({r["part"] for r in rows if r.get("part") is not None and r["part"] not in SCALING}):
        prows = [r for r in rows if r.get("part") == part and r.get("kind") != "alignment"]
        for column in sorted({r["sweep"] for r in prows if r.get("sweep")}):
            srows = [r for r in prows if r.get("sweep") == column]
            names = {r["estimator"] for r in srows}
            slopes = THEORY.get(column)
            label = {
                "beta": "nudging strength beta",
                "adjoint_K": "Neumann terms K",
                "truncation": "truncation depth h (intervals or steps)",
                "adjoint_rtol": "Krylov tolerance rtol",
                "draws": "independent draws averaged K",
            }.get(column, column)
            fig = ndp.fidelity_vs_knob(
                srows,
                column,
                slopes=slopes,
                knob_label=label,
                logx=column in LOG_KNOBS,
                title=f"{part}: {', '.join(sorted(names))} against {column}",
            )
            files += ndp.save(fig, run.figures / f"{part}-fidelity-vs-{column}")
        for r in rows:
            if r.get("part") == part and r.get("kind") == "alignment":
                files += ndp.save(
                    ndp.alignment(r["names"], np.array(r["matrix"]), title=f"{part}: gradient alignment"),
                    run.figures / f"{part}-alignment",
                )
    for part, what in SCALING.items():
        srows = [r for r in rows if r.get("part") == part]
        if srows:
            title = f"Cost against n, {what} ({srows[0].get('dtype', '')}, batch of examples)"
            fig = ndp.cost_vs_n(srows, title=title)
            stem = "cost-vs-n" if part == "scaling" else "cost-vs-n-trajectory"
            files += ndp.save(fig, run.figures / stem)
    trows = [r for r in rows if r.get("part") == "training"]
    if trows:
        files += ndp.save(ndp.training_curves(trows), run.figures / "training")
    return files


@ndc.entrypoint
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "plot":
        if len(argv) != 2:
            print("usage: python -m experiments.compare_estimators plot RUN_DIR", file=sys.stderr)
            raise SystemExit(2)
        for f in plot(argv[1]):
            print(f)
        return
    cfg, args = ndc.cli(Config, argv, description=__doc__)
    check(cfg)
    run = RunDir(args.out, cfg)
    if (run.path / "metrics.jsonl").exists():
        (run.path / "metrics.jsonl").unlink()  # a comparison is recomputed whole: it is cheap
    rows = []
    for name in ("steady", "trajectory"):
        part = getattr(cfg, name)
        if part.enabled:
            rows += run_part(name, part, cfg.seed, run)
    if cfg.scaling.enabled:
        rows += run_scaling(cfg, run)
    columns = [
        "part",
        "estimator",
        "cosine",
        "rel_error",
        "sign_agreement",
        "time_s",
        "compile_s",
        "peak_bytes",
        "converged_fraction",
    ]
    run.write_summary(rows, columns + sorted({k for r in rows for k in r} - set(columns)))
    files = plot(run.path)
    print(f"wrote {run.path / 'summary.csv'} and {len(files)} figure files in {run.figures}")
    for r in rows:
        if r["part"] not in SCALING and "sweep" not in r:
            print(
                f"  {r['part']:>10} {r['estimator']:<16} cosine {r['cosine']:.6f}  rel_error {r['rel_error']:.2e}  {1e3 * r['time_s']:8.2f} ms"
            )


if __name__ == "__main__":
    main()
