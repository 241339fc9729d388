"""Run directories: everything a run produces, written atomically, checksummed, locked,
resumable.

```
<out>/.lock           fcntl lock of the process that owns the directory (its PID inside)
<out>/config.yaml     the resolved config, its sha256, package versions, devices, git commit
<out>/metrics.jsonl   tidy rows, one JSON object per line (appended, flushed, fsynced)
<out>/summary.csv     the headline table (rewritten atomically)
<out>/figures/        PNG and PDF
<out>/checkpoints/    <name>-<step>.eqx (eqx.tree_serialise_leaves) + <name>-<step>.json
                      (metadata with the sha256 of both); <name>.json is the newest one's copy
<out>/results/        <name>.result: named results (bytes or JSON) with their sha256;
                      network.result + network_info.result: a trained network (save_network)
```

```python
run = RunDir(args.out, cfg)                       # locks <out>, checks/writes config.yaml
state, meta = run.checkpoint(like=initial_state)  # (None, None) on a fresh run
...
run.log(dict(epoch=3, train_loss=0.1))            # one tidy row
run.save_checkpoint(state, dict(step=3))          # atomic; metadata written last; keeps 3
rows = run.load_result("chunk-0")                 # None when absent (or damaged: recompute)
if rows is None:
    rows = compute(); run.save_result("chunk-0", rows)
run.write_summary(rows)                           # summary.csv
nd.plotting.save(fig, run.figures / "x")          # atomic PNG + PDF
```

Guarantees (only process 0, `jax.process_index() == 0`, writes or locks):

- **Kill at any moment.** Every file except `metrics.jsonl` is written to a temporary file
  in the same directory, fsynced, and moved into place with `os.replace`; `metrics.jsonl` is
  appended one whole line per write (a torn last line is skipped on reading), and
  `nd.training.fit` rewrites it from the checkpoint's history when it resumes. Final files
  are readable by the group and others (`0o666 & ~umask`, usually 0644).
- **Damage is detected.** Checkpoints and results carry their sha256, verified on load. A
  damaged newest checkpoint falls back to the newest intact one (one line on stderr names
  the damaged file and the one used; `keep` checkpoints are kept, 3 by default); if none is
  intact, `DamagedFileError` names the file and the fix. A damaged result is reported and
  treated as missing (recomputed), or raises with `on_damaged="raise"`.
- **One process per directory.** `RunDir` takes an exclusive `fcntl.flock` on `<out>/.lock`
  (the holder's PID is written inside) and holds it until `close()` or the process ends. A
  second process gets `RunLockedError` naming the holder's PID. The same process may open
  the same directory again (and nested directories: each has its own lock).
- **Never stale.** `config.yaml` holds the complete resolved config and its sha256. The same
  config resumes; a different one raises `StaleRunError` naming the keys that differ; a
  directory with results but no (or a damaged) `config.yaml` is refused too. A directory
  that holds no results yet (a start that failed, e.g. on a typo) is not blocked: a
  different config replaces its `config.yaml` (unless this very process wrote it and still
  has the directory open).
  `nd.training.fit` additionally records a fingerprint of its settings in each checkpoint.

All errors here are `RunDirError`s, a subclass of `nd.config.ConfigError`: an experiment
wrapped in `nd.config.entrypoint` ends with their one line and exit code 2.
"""

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import equinox as eqx
import jax
import yaml

from .config import ConfigError  # config.py imports nothing from neurodyn: no import cycle


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked (one line: the file and the fix)."""


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock."""


class StaleRunError(RunDirError):
    """The directory holds a run of a different config or settings (or of an unknown one)."""


class DamagedFileError(RunDirError):
    """A checkpoint or result file failed its checksum and nothing intact replaces it."""


def _umask() -> int:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and restore at once)
    os.umask(mask)
    return mask


def atomic_write(path: pathlib.Path, data: bytes | str) -> None:
    """Writes `data` to `path` through a temporary file in the same directory, fsync and
    `os.replace`: readers see the old file or the new one, never a part. The file gets the
    permissions of an ordinary new file (`0o666 & ~umask`, usually 0644), not mkstemp's 0600."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _json_digest(obj) -> str:
    return sha256(json.dumps(obj, sort_keys=True))


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
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=pathlib.Path(__file__).resolve().parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(
        versions=versions,
        devices=[str(d) for d in jax.devices()],
        python=platform.python_version(),
        git_commit=commit,
    )


# ---------------------------------------------------------------------------------------
# Locks: one per directory and process, shared by every RunDir of that directory in the
# process (re-opening a directory must not deadlock), released by the last `close()` or at exit.
# ---------------------------------------------------------------------------------------

_LOCKS: dict[str, list] = {}  # realpath -> [fd, open RunDirs, pid]
_LOCKS_GUARD = threading.Lock()
_CONFIGS_WRITTEN: set[str] = set()  # directories whose config.yaml this process wrote and still holds


def _lock_holder(path: pathlib.Path) -> str:
    for _ in range(20):  # the holder writes its PID right after locking
        try:
            pid = (path / ".lock").read_text().strip()
        except OSError:
            pid = ""
        if pid:
            return pid
        time.sleep(0.01)
    return "unknown"


def _acquire(path: pathlib.Path) -> str:
    key = os.path.realpath(path)
    with _LOCKS_GUARD:
        entry = _LOCKS.get(key)
        if entry is not None and entry[2] == os.getpid():
            entry[1] += 1
            return key
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunLockedError(
                f"{path} is in use by another process (PID {_lock_holder(path)}): wait for it to finish "
                "(or stop it), or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _LOCKS[key] = [fd, 1, os.getpid()]
        return key


def _release(key: str) -> None:
    with _LOCKS_GUARD:
        entry = _LOCKS.get(key)
        if entry is None or entry[2] != os.getpid():
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _LOCKS[key]
            _CONFIGS_WRITTEN.discard(key)
            os.close(entry[0])  # releases the flock; the file stays (unlinking it would race)


_CKPT = re.compile(r"(?P<name>.+)-(?P<step>\d+)\.(?P<ext>json|eqx)")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+,-]*")


def _check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits and _ . = + , - (no '/', not starting with '.')")
    return name


class RunDir:
    """A run's directory (see the module docstring for the layout and the guarantees).

    **Arguments:**

    - `path`: the directory (created).
    - `config`: the resolved config (a dataclass or mapping); when given, `config.yaml` is
      checked against it (same config: resume; different: `StaleRunError`) and written.
    - `keep`: how many checkpoints of each name to keep (older ones are deleted); `None`
      keeps all.
    - `lock`: take the directory's lock (default). `lock=False` is for read-only use (plots
      of a finished run) and never for writing into a directory another process may use.

    The lock is held until `close()` (or the `with` block ends) or the process exits.
    """

    def __init__(self, path, config=None, *, keep: int | None = 3, lock: bool = True):
        if keep is not None and keep < 1:
            raise ValueError(f"keep={keep}: keep at least one checkpoint (or None for all)")
        self.path = pathlib.Path(path)
        self.keep = keep
        self.writer = jax.process_index() == 0
        self._lock_key = None
        if self.writer:
            (self.path / "figures").mkdir(parents=True, exist_ok=True)
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            if lock:
                self._lock_key = _acquire(self.path)
        if config is not None:
            self.write_config(config)

    @classmethod
    def reader(cls, path, hint: str = "") -> "RunDir":
        """An existing run directory opened for reading only: no lock taken, nothing created.
        `RunDirError` when `path` holds no run (no `config.yaml`); `hint` ends that message
        (what to pass instead)."""
        path = pathlib.Path(path)
        if not (path / "config.yaml").is_file():
            raise RunDirError(f"{path} is not a run directory: it has no config.yaml{hint}")
        return cls(path, lock=False)

    def close(self) -> None:
        """Releases this RunDir's hold on the directory's lock (the lock itself goes when every
        RunDir of the directory in this process is closed)."""
        if self._lock_key is not None:
            _release(self._lock_key)
            self._lock_key = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"RunDir({str(self.path)!r})"

    @property
    def figures(self) -> pathlib.Path:
        return self.path / "figures"

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.path / "checkpoints"

    # -- config --------------------------------------------------------------------------

    def has_results(self) -> bool:
        """Whether the directory (or a sub-run in it) holds anything a run produced: any file
        other than `config.yaml`, `.lock` and temporary `.name.xxx` files."""
        for _, _, files in os.walk(self.path):
            if any(f not in ("config.yaml", ".lock") and not f.startswith(".") for f in files):
                return True
        return False

    def write_config(self, config) -> None:
        """Checks `config` against `config.yaml` and writes it (the resolved config, its
        sha256 and the provenance).

        - no `config.yaml`: written, unless the directory already holds results (whose
          config is then unknown: `StaleRunError`);
        - the same config: resume (the file, with the first start's provenance, is kept). A
          field that a later version of the config's dataclass added counts as the same
          when the old file lacks it and the new config holds that field's default: a run
          made before an option existed resumes with the option off;
        - a different config (or a damaged file): `StaleRunError` naming the keys that differ,
          unless the directory holds no results yet and another process (or this one, since
          closed) wrote it: a start that failed before doing any work. Then it is replaced,
          with a note on stderr.
        """
        defaults = None
        if isinstance(config, Mapping):
            cfg = _plain(dict(config))
        elif dataclasses.is_dataclass(config) and not isinstance(config, type):
            cfg = _plain(dataclasses.asdict(config))
            try:  # the fields' defaults, for a field added since the run began
                defaults = _plain(dataclasses.asdict(type(config)()))
            except TypeError:  # a field without a default
                defaults = None
        else:
            raise TypeError(f"config must be a dataclass instance or a mapping, got {type(config).__name__}")
        digest = _json_digest(cfg)
        file = self.path / "config.yaml"
        key = os.path.realpath(self.path)
        fix = "rerun with the same config and overrides to resume it, or choose another --out (or delete the directory) to start a new run"
        if file.exists():
            old, damaged = None, None
            try:
                doc = yaml.safe_load(file.read_text())
                old = doc.get("config") if isinstance(doc, dict) else None
                if not isinstance(old, dict):
                    damaged = "no config in it"
                elif doc.get("config_sha256") not in (None, _json_digest(old)):
                    damaged = "its checksum does not match"
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                damaged = f"unreadable: {type(e).__name__}"
            if damaged is None and (old == cfg or _same_but_added_defaults(old, cfg, defaults)):
                _CONFIGS_WRITTEN.add(key)
                return
            if key in _CONFIGS_WRITTEN or self.has_results():
                if damaged is not None:
                    raise StaleRunError(
                        f"{file} is damaged ({damaged}), so which config produced the results in {self.path} is unknown: "
                        "choose another --out (or delete the directory) to start a new run"
                    )
                keys = _differing_keys(old, cfg, defaults=defaults)
                raise StaleRunError(
                    f"{self.path} holds a run of a different config (differs in {', '.join(keys)}): {fix}"
                )
            if self.writer:
                print(
                    f"note: replacing {file}: the run it describes never started (no results in {self.path})",
                    file=sys.stderr,
                )
        elif self.has_results():
            raise StaleRunError(
                f"{self.path} holds results but no config.yaml, so which config produced them is unknown: "
                "choose another --out (or delete the directory) to start a new run"
            )
        if self.writer:
            doc = dict(config=cfg, config_sha256=digest, provenance=provenance())
            atomic_write(file, yaml.safe_dump(doc, sort_keys=False))
        _CONFIGS_WRITTEN.add(key)

    def read_config(self, schema=None):
        """The config this run was started with, read back from `config.yaml`: a plain
        mapping, or with `schema` (the experiment's config dataclass) built into it with
        `nd.config.build`'s checks (a field added to `schema` since the run began takes its
        default). A missing or damaged file is a `RunDirError` naming it, and so is a run of
        another experiment (its `experiment` field is not `schema`'s default)."""
        file = self.path / "config.yaml"
        try:
            doc = yaml.safe_load(file.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.path} is not a run directory: it has no config.yaml") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise RunDirError(f"{file} cannot be read ({type(e).__name__})") from None
        cfg = doc.get("config") if isinstance(doc, dict) else None
        if not isinstance(cfg, dict) or doc.get("config_sha256") not in (None, _json_digest(cfg)):
            raise RunDirError(f"{file} is damaged (no config in it, or its checksum does not match)")
        if schema is None:
            return cfg
        from .config import build, own_experiment

        ours, theirs = own_experiment(schema), cfg.get("experiment")
        if ours is not None and isinstance(theirs, str) and theirs != ours:
            raise RunDirError(
                f"{self.path} is a run of experiments.{theirs}, not of experiments.{ours}: "
                f"read it with experiments.{theirs}'s own functions"
            )
        try:
            return build(schema, cfg)
        except ConfigError as e:
            raise RunDirError(f"{file}: {e}") from None

    # -- rows and tables -----------------------------------------------------------------

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
        for line in p.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                out.append(row)
        return out

    def replace_rows(self, rows: Iterable[Mapping]) -> None:
        """Rewrites `metrics.jsonl` atomically with `rows` (on resume, the checkpoint's
        history is the truth: rows logged after it by a killed run are dropped)."""
        if self.writer:
            atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(_plain(dict(r))) + "\n" for r in rows))

    def write_summary(self, rows: Iterable[Mapping], columns: list[str] | None = None) -> None:
        table: list[dict[str, Any]] = [_plain(dict(r)) for r in rows]
        if columns is None:
            columns = []
            for r in table:
                columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
        if self.writer:
            atomic_write(self.path / "summary.csv", buf.getvalue())

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, tree, meta: Mapping, name: str = "last") -> None:
        """Saves `tree` (eqx.tree_serialise_leaves) as `<name>-<step>.eqx` and its JSON
        metadata (`meta` plus the file name and the sha256 of the file and of the metadata)
        as `<name>-<step>.json` and `<name>.json`, each atomically and the metadata last, so
        a checkpoint that metadata names is complete. `step = meta["step"]` (default 0).
        Then only the newest `keep` checkpoints of `name` are kept."""
        if not self.writer:
            return
        _check_name(name, "checkpoint name")
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, tree)
        data = buf.getvalue()
        step = int(meta.get("step", 0))
        file = f"{name}-{step}.eqx"
        atomic_write(self.checkpoints / file, data)
        body = dict(_plain(dict(meta)), file=file, sha256=sha256(data))
        text = json.dumps(dict(body, meta_sha256=_json_digest(body)))
        atomic_write(self.checkpoints / f"{name}-{step}.json", text)
        atomic_write(self.checkpoints / f"{name}.json", text)
        self._prune(name)

    def _steps(self, name: str) -> dict[int, set[str]]:
        steps: dict[int, set[str]] = {}
        for p in self.checkpoints.glob(f"{_glob_escape(name)}-*"):
            m = _CKPT.fullmatch(p.name)
            if m and m["name"] == name:
                steps.setdefault(int(m["step"]), set()).add(m["ext"])
        return steps

    def _prune(self, name: str) -> None:
        if self.keep is None:
            return
        steps = self._steps(name)
        complete = sorted((s for s, exts in steps.items() if "json" in exts), reverse=True)
        kept = complete[: self.keep]
        if not kept:
            return
        for s, exts in steps.items():
            if s in kept or ("json" not in exts and s > kept[-1]):
                continue  # kept, or a newer checkpoint still being written
            for ext in exts:
                (self.checkpoints / f"{name}-{s}.{ext}").unlink(missing_ok=True)

    def _read_checkpoint(self, meta_path: pathlib.Path):
        """`(meta, data, None)` of an intact checkpoint, or `(None, None, (file, why))`."""
        try:
            meta = json.loads(meta_path.read_bytes())
            if not isinstance(meta, dict) or not isinstance(meta.get("file"), str):
                raise ValueError("not checkpoint metadata")
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return None, None, (meta_path, f"unreadable: {type(e).__name__}")
        legacy = "meta_sha256" not in meta and "sha256" not in meta  # written before checksums
        if not legacy:
            body = {k: v for k, v in meta.items() if k != "meta_sha256"}
            if meta.get("meta_sha256") != _json_digest(body):
                return None, None, (meta_path, "checksum mismatch")
        data_path = self.checkpoints / meta["file"]
        try:
            data = data_path.read_bytes()
        except OSError as e:
            return None, None, (data_path, f"unreadable: {type(e).__name__}")
        if not legacy and sha256(data) != meta.get("sha256"):
            return None, None, (data_path, "checksum mismatch")
        return meta, data, None

    def checkpoint(self, like, name: str = "last", *, expect: Mapping | None = None):
        """`(tree, meta)` of the newest intact checkpoint of `name`, or `(None, None)` when
        there is none yet. `like` is a tree of the same structure (`eqx.tree_deserialise_leaves`).

        Damaged files (failed checksum, truncated, unreadable) are skipped: one line on stderr
        names them and the checkpoint used instead. `DamagedFileError` when checkpoints exist
        but none is intact; `StaleRunError` when the intact one does not fit `like`, or when
        `expect` (a mapping) differs from the same keys of its metadata (keys it lacks are
        not compared)."""
        candidates = []
        if (self.checkpoints / f"{name}.json").exists():
            candidates.append(self.checkpoints / f"{name}.json")
        candidates += [
            self.checkpoints / f"{name}-{s}.json"
            for s, exts in sorted(self._steps(name).items(), reverse=True)
            if "json" in exts
        ]
        damaged = []
        for meta_path in candidates:
            meta, data, problem = self._read_checkpoint(meta_path)
            if meta is None or data is None:
                if problem is not None and problem[0] not in [d[0] for d in damaged]:
                    damaged.append(problem)
                continue
            if expect:
                old = {k: meta[k] for k in expect if k in meta}
                new = {k: _plain(v) for k, v in expect.items() if k in meta}
                if old != new:
                    raise StaleRunError(
                        f"{self.path} holds a run with other settings (differs in {', '.join(_differing_keys(old, new))}): "
                        "resuming it would report that run's numbers; choose another --out (or delete the directory) to start a new run"
                    )
            try:
                tree = eqx.tree_deserialise_leaves(io.BytesIO(data), like)
            except Exception as e:
                raise StaleRunError(
                    f"{self.checkpoints / meta['file']} does not fit the state being restored ({type(e).__name__}): it was saved "
                    "by another network or optimiser; choose another --out (or delete the directory) to start a new run"
                ) from None
            if damaged and self.writer:
                what = "; ".join(f"{f} ({why})" for f, why in damaged)
                print(
                    f"warning: damaged checkpoint file(s) {what}: resuming from {meta_path} (step {meta.get('step')})",
                    file=sys.stderr,
                )
            return tree, meta
        if damaged:
            f, why = damaged[0]
            raise DamagedFileError(
                f"{f} is damaged ({why}) and no intact older checkpoint is left in {self.checkpoints}: "
                f"delete {self.path} or choose another --out to start afresh"
            )
        return None, None

    # -- named results and done markers -------------------------------------------------

    def _result_path(self, name: str) -> pathlib.Path:
        return self.path / "results" / f"{_check_name(name, 'result name')}.result"

    def save_result(self, name: str, value) -> None:
        """Saves a named result atomically with its sha256: `bytes`, or anything JSON holds
        (dicts, lists, numbers, strings; NumPy/JAX arrays become lists). The file is
        `results/<name>.result`: one JSON header line (`kind`, `size`, `sha256`), then the
        payload."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            kind, payload = "bytes", bytes(value)
        else:
            kind, payload = "json", json.dumps(_plain(value)).encode()
        header = json.dumps(dict(kind=kind, size=len(payload), sha256=sha256(payload))).encode()
        if self.writer:
            atomic_write(self._result_path(name), header + b"\n" + payload)

    def load_result(self, name: str, *, on_damaged: str = "recompute"):
        """The result saved under `name`, or `None` when there is none. A damaged one (failed
        checksum, truncated): with `on_damaged="recompute"` (default) one line on stderr names
        it and `None` is returned, so the caller computes and saves it again; with
        `on_damaged="raise"`, `DamagedFileError`."""
        if on_damaged not in ("recompute", "raise"):
            raise ValueError(f"on_damaged must be 'recompute' or 'raise', got {on_damaged!r}")
        p = self._result_path(name)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            return None
        header, sep, payload = raw.partition(b"\n")
        why = None
        try:
            h = json.loads(header)
            if not sep or not isinstance(h, dict) or len(payload) != h.get("size"):
                why = "truncated"
            elif sha256(payload) != h.get("sha256"):
                why = "checksum mismatch"
            elif h.get("kind") == "bytes":
                return payload
            else:
                return json.loads(payload)
        except ValueError:
            why = "unreadable header"
        if on_damaged == "raise":
            raise DamagedFileError(
                f"{p} is damaged ({why}): delete it to recompute that part, or delete {self.path} / choose another --out"
            )
        if self.writer:
            print(f"warning: {p} is damaged ({why}): recomputing it", file=sys.stderr)
        return None

    # -- the trained network -------------------------------------------------------------

    def save_network(self, net, **info) -> None:
        """Saves a trained network: its arrays (`eqx.tree_serialise_leaves`) as the result
        `network`, then `info` (JSON: what rebuilding its structure needs, and which epoch or
        step it is) as `network_info`, last, so an `info` that exists names a complete network."""
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, net)
        self.save_result("network", buf.getvalue())
        self.save_result("network_info", info)

    def network_info(self) -> dict:
        """The `info` saved with the network. `RunDirError` when the directory holds none (a
        run that has not finished, or a directory of sub-runs); `DamagedFileError` when it is
        damaged."""
        info = self.load_result("network_info", on_damaged="raise")
        if not isinstance(info, dict):
            raise RunDirError(
                f"{self.path} holds no trained network: pass a sub-run (<out>/<estimator>-seed<k>, not <out>) "
                "that has finished (its network is saved when it ends); rerun its command to finish it"
            )
        return info

    def load_network(self, like):
        """The saved network, its arrays read into `like` (a network of the same structure,
        e.g. rebuilt from `read_config` and `network_info`). `DamagedFileError` for a damaged
        file, `StaleRunError` when the arrays do not fit `like`."""
        blob = self.load_result("network", on_damaged="raise")
        if blob is None:
            self.network_info()  # no info either: "holds no trained network"
            raise RunDirError(f"{self.path} has network_info but no network result: rerun its command")
        try:
            return eqx.tree_deserialise_leaves(io.BytesIO(blob), like)
        except Exception as e:
            raise StaleRunError(
                f"{self._result_path('network')} does not fit the network rebuilt from {self.path / 'config.yaml'} "
                f"({type(e).__name__}): it was saved by another network class or version"
            ) from None

    def done(self, key: str) -> bool:
        """Whether `mark_done(key)` was called for this directory (by any earlier process)."""
        return (self.checkpoints / f"done-{_check_name(key, 'done key')}").exists()

    def mark_done(self, key: str) -> None:
        """Marks `key` (a sweep point, a chunk) finished: call it after saving its results."""
        if self.writer:
            atomic_write(self.checkpoints / f"done-{_check_name(key, 'done key')}", "")


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _same_but_added_defaults(old, new, defaults) -> bool:
    """Whether `new` is `old` plus keys at their `defaults` (fields added to the config's
    dataclass since `old` was written)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        if not set(old) <= set(new):
            return False
        defaults = defaults if isinstance(defaults, Mapping) else {}
        for k, v in new.items():
            if k in old:
                if not _same_but_added_defaults(old[k], v, defaults.get(k)):
                    return False
            elif k not in defaults or v != defaults[k]:
                return False
        return True
    return old == new


def _differing_keys(a, b, where="", defaults=None):
    """The keys whose values differ between `a` (old) and `b` (new); a key only `b` holds,
    at its `defaults` value, does not (see `_same_but_added_defaults`)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        defaults = defaults if isinstance(defaults, Mapping) else {}
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a and k in defaults and b[k] == defaults[k]:
                continue
            out += _differing_keys(a.get(k), b.get(k), f"{where}{k}.", defaults.get(k))
        return out
    return [] if a == b else [where.rstrip(".") or "value"]


def _plain(obj) -> Any:
    """JSON/YAML-safe: numpy and JAX scalars to Python, arrays and tuples to lists."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
