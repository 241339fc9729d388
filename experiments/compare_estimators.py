"""Compare the gradient estimators on one network, one batch, one objective.

    python -m experiments.compare_estimators --config configs/compare_estimators.yaml [--quick] [--out DIR]
    python -m experiments.compare_estimators plot RUN_DIR      # redraw the figures, no recompute

For each part (a steady-state objective, a trajectory objective) it computes the exact
reference gradient (float64: a dense implicit-function-theorem solve, or jax.grad through a
fine RK4 solve), then every estimator variant and every point of the knob sweeps (EP's beta,
RBP's Krylov tolerance and Neumann K, BPTT's truncation h, RTRL's approximation), and the
cost against the network size n. It writes `summary.csv` (estimator, cosine, rel_error,
sign_agreement, time_s, compile_s, peak_bytes, one column per knob), `metrics.jsonl`
(per-leaf errors too) and the figures in `figures/` (PNG and PDF).
"""

import dataclasses
import inspect
import json
import sys
import time
from typing import Any

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import neurodyn as nd  # noqa: E402
import neurodyn.fidelity as fid  # noqa: E402
import neurodyn.plotting as ndp  # noqa: E402
from neurodyn import config as ndc  # noqa: E402
from neurodyn._misc import tree_cast  # noqa: E402
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


def _with_knob(spec: dict, knob: str, value):
    out = json.loads(json.dumps(spec))
    node = out
    *path, last = knob.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value
    return out


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

    def evaluate(name, spec, **knobs):
        # A sweep point equal to a variant already measured (EP's beta = its variant's) is not
        # measured twice: every measurement compiles.
        memo = json.dumps(spec, sort_keys=True)
        if memo not in measured:
            est = ndc.build_object(spec, f"{part_name}.variants.{name}.", family="estimators")
            measured[memo] = fid.measure(est, net, xs, ys, objective)
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
            grads[name] = evaluate(name, spec)["grads"]
    for sw in part.sweeps:
        if sw.variant not in part.variants:
            raise ndc.ConfigError(
                f"sweep over '{sw.knob}' names the unknown variant '{sw.variant}' (variants: {', '.join(part.variants)})"
            )
        column = sw.knob.replace(".", "_")
        for v in sw.values:
            spec = _with_knob(part.variants[sw.variant], sw.knob, v)
            evaluate(sw.variant, spec, **{column: v, "sweep": column})
    names, M = fid.alignment_matrix(grads)
    run.log(dict(part=part_name, kind="alignment", names=names, matrix=M.tolist()))
    return rows


def run_scaling(cfg: Config, run: RunDir):
    sc = cfg.scaling
    dtype = jnp.float32 if sc.dtype == "float32" else jnp.float64
    rows = []
    part = cfg.steady
    objective, T = _objective(part)
    for n in sc.sizes:
        net = make_network(part.network, jr.PRNGKey(cfg.seed), n=n, where="steady.network.")
        net = tree_cast(net, dtype)
        xs, ys = _batch(net, jr.PRNGKey(cfg.seed + 1), sc.batch, T)
        xs, ys = xs.astype(dtype), ys.astype(dtype)
        for name in sc.variants:
            if name not in part.variants:
                raise ndc.ConfigError(f"scaling.variants names '{name}', not a variant of the steady part")
            est = ndc.build_object(part.variants[name], f"steady.variants.{name}.", family="estimators")
            m = fid.measure(est, net, xs, ys, objective)
            row = dict(
                part="scaling",
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
            print(f"[scaling] n={n} {name}: {1e3 * m['time_s']:.2f} ms, peak {m['peak_bytes']} B", file=sys.stderr)
    return rows


# Theoretical log-log slopes drawn on the fidelity figures, by knob and estimator variant.
THEORY = {"beta": {"ep-one-sided": 1.0, "ep-centered": 2.0}, "adjoint_rtol": {"rbp-krylov": 1.0}}
# Knobs whose error falls as a power law (log axis); the others (K, h) fall geometrically.
LOG_KNOBS = {"beta", "adjoint_rtol"}


def plot(run_dir) -> list[str]:
    """Redraws every figure from `metrics.jsonl`, without recomputing."""
    run = RunDir(run_dir)
    rows = run.rows()
    files = []
    for part in sorted({r["part"] for r in rows if r.get("part") not in (None, "scaling")}):
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
    srows = [r for r in rows if r.get("part") == "scaling"]
    if srows:
        files += ndp.save(
            ndp.cost_vs_n(srows, title=f"Cost against n ({srows[0].get('dtype', '')}, batch of examples)"),
            run.figures / "cost-vs-n",
        )
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
        if r["part"] != "scaling" and "sweep" not in r:
            print(
                f"  {r['part']:>10} {r['estimator']:<16} cosine {r['cosine']:.6f}  rel_error {r['rel_error']:.2e}  {1e3 * r['time_s']:8.2f} ms"
            )


if __name__ == "__main__":
    main()
