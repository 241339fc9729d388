"""Runs every config's quick variant through its experiment (CI does this).

    python -m experiments.run_all_quick --out DIR

Each `configs/*.yaml` names its experiment module in a top-level `experiment:` key; a config
without one, or naming a module that does not exist yet, is reported as a failure, never
skipped. Each experiment runs in its own process (`python -m experiments.<name> --config
FILE --quick --out DIR/<config name>`); the exit code is 1 if any failed.
"""

import argparse
import importlib.util
import pathlib
import subprocess
import sys
import time

from neurodyn.config import ConfigError, read_yaml


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--configs", default="configs")
    args = p.parse_args(argv)
    failures = []
    configs = sorted(pathlib.Path(args.configs).glob("*.yaml"))
    for cfg in configs:
        try:
            data = read_yaml(cfg)  # the experiments' loader: no aliases, UTF-8, not empty
            experiment = data.get("experiment") if isinstance(data, dict) else None
        except ConfigError as e:
            experiment, problem = None, str(e).removeprefix(f"config {cfg}").lstrip(": ")
        else:
            problem = "no 'experiment:' key naming its module" if not experiment else None
        if experiment is not None and (not isinstance(experiment, str) or not experiment.isidentifier()):
            experiment, problem = None, f"'experiment: {experiment}' is not a module name"
        if experiment and importlib.util.find_spec(f"experiments.{experiment}") is None:
            problem = f"its experiment module 'experiments.{experiment}' does not exist (yet)"
        if problem:
            failures.append(f"{cfg}: {problem}")
            print(f"FAIL {cfg}: {problem}", flush=True)
            continue
        out = pathlib.Path(args.out) / cfg.stem
        cmd = [sys.executable, "-m", f"experiments.{experiment}", "--config", str(cfg), "--quick", "--out", str(out)]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        took = time.perf_counter() - t0
        status = "ok" if rc == 0 else f"FAIL (exit {rc})"
        print(f"{status} {cfg} in {took:.0f}s -> {out}", flush=True)
        if rc != 0:
            failures.append(f"{cfg}: exit {rc}")
    print(f"{len(configs) - len(failures)} passed, {len(failures)} failed")
    for f in failures:
        print(f"  failed: {f}")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
