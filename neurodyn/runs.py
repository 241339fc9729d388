"""Run directories: everything a run produces, written atomically, resumable.

```
<out>/config.yaml     the resolved config, with package versions, devices and git commit
<out>/metrics.jsonl   tidy rows, one JSON object per line (appended, flushed, fsynced)
<out>/summary.csv     the headline table (rewritten atomically)
<out>/figures/        PNG and PDF
<out>/checkpoints/    eqx.tree_serialise_leaves files + JSON metadata (atomic replace)
```

Re-running the same command into the same directory resumes: `RunDir.checkpoint()` returns
the last saved state, and `RunDir.done(key)` says whether a sweep point already finished.
Only process 0 writes (`jax.process_index() == 0`).

```python
run = RunDir(args.out, cfg)                       # writes config.yaml (+ provenance)
state, meta = run.checkpoint(like=initial_state)  # (None, None) on a fresh run
...
run.log(dict(epoch=3, train_loss=0.1))            # one tidy row
run.save_checkpoint(state, dict(step=3))          # atomic; meta is written last
if not run.done("chunk-0"): ...; run.mark_done("chunk-0")
run.write_summary(rows)                           # summary.csv
fig.savefig(run.figures / "x.png")
```

Why it is safe to kill at any moment: every file except `metrics.jsonl` is written to a
temporary file and moved into place with `os.replace`; `metrics.jsonl` is appended one whole
line per write (a torn last line is skipped on reading), and `nd.training.fit` rewrites it
from the checkpoint's history when it resumes.
"""

import csv
import dataclasses
import io
import json
import os
import pathlib
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Mapping

import equinox as eqx
import jax
import yaml


def atomic_write(path: pathlib.Path, data: bytes | str) -> None:
    """Writes `data` to `path` through a temporary file and `os.replace`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def provenance() -> dict:
    """Package versions, devices and the git commit of the working tree."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("neurodyn", "jax", "jaxlib", "diffrax", "equinox", "optax", "lineax", "optimistix", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=pathlib.Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(
        versions=versions,
        devices=[str(d) for d in jax.devices()],
        python=platform.python_version(),
        git_commit=commit,
    )


class RunDir:
    """A run's directory. Writes happen on process 0 only."""

    def __init__(self, path, config=None):
        self.path = pathlib.Path(path)
        self.writer = jax.process_index() == 0
        if self.writer:
            (self.path / "figures").mkdir(parents=True, exist_ok=True)
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        if config is not None:
            self.write_config(config)

    @property
    def figures(self) -> pathlib.Path:
        return self.path / "figures"

    def write_config(self, config) -> None:
        """Writes `config.yaml`: the resolved config and its provenance. Re-running into a
        directory that holds a run of a different config is an error (resuming it would mix
        two experiments): it names the keys that differ."""
        cfg = _plain(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
        existing = self.path / "config.yaml"
        if existing.exists():
            try:
                old = (yaml.safe_load(existing.read_text()) or {}).get("config")
            except yaml.YAMLError:
                old = None
            if old is not None and old != cfg:
                from .config import ConfigError

                keys = _differing_keys(old, cfg)
                raise ConfigError(
                    f"{self.path} holds a run of a different config (differs in {', '.join(keys)}): "
                    "resume with the same config and overrides, or choose another --out"
                )
        doc = dict(config=cfg, provenance=provenance())
        if self.writer:
            atomic_write(self.path / "config.yaml", yaml.safe_dump(doc, sort_keys=False))

    def log(self, row: Mapping) -> None:
        """Appends one tidy row to `metrics.jsonl` (a whole line per write, fsynced)."""
        if not self.writer:
            return
        line = json.dumps(_plain(dict(row))) + "\n"
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict]:
        """The rows of `metrics.jsonl` (a torn last line from a killed run is skipped)."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def replace_rows(self, rows: Iterable[Mapping]) -> None:
        """Rewrites `metrics.jsonl` atomically with `rows` (on resume, the checkpoint's
        history is the truth: rows logged after it by a killed run are dropped)."""
        if self.writer:
            atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(_plain(dict(r))) + "\n" for r in rows))

    def write_summary(self, rows: Iterable[Mapping], columns: list[str] | None = None) -> None:
        rows = [_plain(dict(r)) for r in rows]
        if columns is None:
            columns = []
            for r in rows:
                columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        if self.writer:
            atomic_write(self.path / "summary.csv", buf.getvalue())

    def save_checkpoint(self, tree, meta: Mapping, name: str = "last") -> None:
        """Saves `tree` (eqx.tree_serialise_leaves) and its JSON metadata, atomically: the
        metadata is replaced last, so a checkpoint it names is always complete."""
        if not self.writer:
            return
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, tree)
        step = meta.get("step", 0)
        atomic_write(self.path / "checkpoints" / f"{name}-{step}.eqx", buf.getvalue())
        atomic_write(self.path / "checkpoints" / f"{name}.json", json.dumps(dict(_plain(dict(meta)), file=f"{name}-{step}.eqx")))

    def checkpoint(self, like, name: str = "last"):
        """`(tree, meta)` of the last complete checkpoint, or `(None, None)`."""
        meta_path = self.path / "checkpoints" / f"{name}.json"
        if not meta_path.exists():
            return None, None
        meta = json.loads(meta_path.read_text())
        with open(self.path / "checkpoints" / meta["file"], "rb") as f:
            tree = eqx.tree_deserialise_leaves(f, like)
        return tree, meta

    def done(self, key: str) -> bool:
        return (self.path / "checkpoints" / f"done-{key}").exists()

    def mark_done(self, key: str) -> None:
        if self.writer:
            atomic_write(self.path / "checkpoints" / f"done-{key}", "")


def _differing_keys(a, b, where=""):
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differing_keys(a.get(k), b.get(k), f"{where}{k}.")
        return out
    return [] if a == b else [where.rstrip(".")]


def _plain(obj):
    """JSON/YAML-safe: numpy and JAX scalars to Python, tuples to lists."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if hasattr(obj, "shape") and getattr(obj, "shape", None) == ():
        return obj.item()
    return obj
