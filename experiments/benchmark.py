"""neurodyn against its peers, side by side in one run.

    python -m experiments.benchmark            # every section, CPU sizes
    python -m experiments.benchmark --quick    # tiny sizes (smoke test)
    python -m experiments.benchmark --large    # GPU sizes (n up to 4096, B = 256)
    python -m experiments.benchmark --sections bptt,rbp

Each section lives in `experiments/benchmarks/<name>.py` with `run(quick, large) -> rows`.
Ratios are ours / peer, measured in the same process (below 1: neurodyn is faster).
Results go to `experiments/results/benchmark-<platform>.{md,json}`.
"""

import argparse
import importlib
import json
import pathlib
import platform
import sys
import time

import jax

import neurodyn as nd
from experiments.benchmarks._timing import device_name


SECTIONS = ["bptt", "rbp", "ep", "rtrl", "sparse", "symmetrize", "stalled", "sweep", "scaling", "overhead"]


def _markdown(rows):
    head = "| section | problem | ours | peer | ours ms | peer ms | ratio | target |\n|---|---|---|---|---:|---:|---:|---|\n"
    body = "".join(
        f"| {r['section']} | {r['problem']} | {r['ours']} | {r['peer']} | {r['ours_ms']:.2f} | "
        f"{r['peer_ms']:.2f} | {r['ratio']:.3f} | {r['target']} |\n"
        for r in rows
    )
    return head + body


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--large", action="store_true", help="GPU sizes")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--out", default="experiments/results")
    p.add_argument(
        "--tune-allocator",
        action="store_true",
        help="call nd.tune_cpu_allocator() first (ours and the peers share this process and its allocator)",
    )
    args = p.parse_args(argv)
    tuned = nd.tune_cpu_allocator() if args.tune_allocator else False
    rows, skipped = [], []
    for name in args.sections.split(","):
        try:
            mod = importlib.import_module(f"experiments.benchmarks.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"experiments.benchmarks.{name}":
                skipped.append(name)
                continue
            raise
        t0 = time.perf_counter()
        new = mod.run(quick=args.quick, large=args.large)
        print(f"[{name}] {len(new)} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        print(_markdown(new), flush=True)  # as each section ends: a later one may run out of time
        rows += [dict(r, allocator_tuned=tuned) for r in new]
    md = _markdown(rows)
    header = (
        f"Device: {device_name()} ({platform.processor() or platform.machine()}), jax {jax.__version__}; "
        f"command: `python -m experiments.benchmark{' --quick' if args.quick else ''}{' --large' if args.large else ''}"
        f"{' --tune-allocator' if args.tune_allocator else ''}"
        f"{f' --sections {args.sections}' if args.sections != ','.join(SECTIONS) else ''}`; "
        f"nd.tune_cpu_allocator applied: {tuned}\n\n"
    )
    print(header + md)
    if skipped:
        print(f"(sections not present yet: {', '.join(skipped)})")
    if not args.quick:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plat = jax.devices()[0].platform
        (out / f"benchmark-{plat}.md").write_text(header + md)
        (out / f"benchmark-{plat}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
