"""Multi-process runs on JAX's own distributed runtime (`jax.distributed`).

One launch for every experiment (parsed by `nd.config.cli`, which calls `initialize` before
anything touches JAX):

    python -m experiments.<name> --config ... --distributed \
        [--coordinator-address HOST:PORT --num-processes N --process-id I] [--heartbeat-timeout S]

The options are the arguments of `jax.distributed.initialize`; without them (or with some of
them) the rest comes from the cluster's environment (SLURM: `srun` sets it). Any of the
options implies `--distributed`.

After `initialize`, `jax.devices()` spans every process: `nd.sweeps.run` shards the sweep axis
and `nd.training.fit` shards each mini-batch over all of them; only process 0 writes the run
directory (`nd.runs.RunDir`), and every process reads the same checkpoints, so a killed job
rerun with the same command resumes everywhere from the same epoch or chunk.

**When a process dies** (killed, out of memory, a node lost) the others cannot continue: a
collective fails at once, or the coordination service notices the missing heartbeats
(`heartbeat_timeout`, 100 s by default). JAX then aborts the process with a page of C++ log
and a stack trace; `initialize` (with `tidy_errors=True`, the default) routes the process's
stderr through a small filter process that replaces that page with one line,

    error: process 0/2: another process of this job died or stopped responding (...): rerun the same command to resume from the last checkpoint

and the process exits non-zero (134, JAX's abort, or 1). Everything else on stderr passes
through unchanged.
"""

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jaxtyping import ArrayLike

from .config import ConfigError


__all__ = ["initialize", "is_initialized", "global_array"]

_STATE: dict[str, str | None] = {"tag": None}

_FATAL_MARKERS = (
    "Terminating process because the JAX distributed service detected fatal errors",
    "Gloo all-reduce failed",
    "Gloo all-gather failed",
    "Gloo ",  # any other Gloo collective failure
    "Connection reset by peer",
    "Connection closed by peer",
)

_PEER_LOST = (
    "another process of this job died or stopped responding ({why}): the job cannot continue; "
    "rerun the same command to resume from the last checkpoint"
)


def is_initialized() -> bool:
    """Whether `jax.distributed` is initialised in this process."""
    return jax.distributed.is_initialized()


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int | None = None,
    initialization_timeout: int | None = None,
    tidy_errors: bool = True,
) -> None:
    """`jax.distributed.initialize` with these arguments (`None`: from the cluster's
    environment, SLURM), before anything touches JAX. Calling it again is a no-op.

    **Arguments:**

    - `coordinator_address`: `HOST:PORT` of process 0's coordinator (process 0 listens there).
    - `num_processes`, `process_id`: the job's process count and this process's index.
    - `heartbeat_timeout`: seconds without a heartbeat after which a process counts as dead
      (JAX's default: 100).
    - `initialization_timeout`: seconds to wait for every process to connect (JAX's: 300).
    - `tidy_errors`: replace JAX's abort page, when another process dies, by one line (see
      the module docstring).

    A launch that cannot start (no address and no cluster environment, JAX already used, a
    coordinator that never answers) raises `nd.config.ConfigError` with one line: an
    experiment ends with exit code 2.
    """
    if is_initialized():
        return
    kwargs: dict[str, Any] = dict(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    if heartbeat_timeout is not None:
        kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout)
    if initialization_timeout is not None:
        kwargs["initialization_timeout"] = int(initialization_timeout)
    given = [
        f"--{k.replace('_', '-')} {v}"
        for k, v in kwargs.items()
        if v is not None and k in ("coordinator_address", "num_processes", "process_id")
    ]
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError, TypeError) as e:
        text = " ".join(str(e).split())
        if "before any JAX" in text or "already" in text.lower():
            why = "JAX was used before jax.distributed.initialize: call nd.distributed.initialize first thing"
        else:
            why = text or type(e).__name__
        raise ConfigError(
            f"--distributed ({' '.join(given) or 'from the environment'}): {why}; give --coordinator-address HOST:PORT "
            "--num-processes N --process-id I, or start the processes under SLURM (srun)"
        ) from None
    tag = f"process {jax.process_index()}/{jax.process_count()}"
    _STATE["tag"] = tag
    if tidy_errors:
        _tidy_stderr(tag)


def global_array(
    local: ArrayLike | Callable[..., ArrayLike], sharding: jax.sharding.Sharding, shape: Sequence[int] | None = None
) -> jax.Array:
    """A global array of `sharding` (over the devices of every process) from each process's
    own data. `local` is either the whole array (every process holds a copy and supplies its
    devices' blocks from it) or a function `index -> block` (then give the global `shape`)
    that loads only the rows a device needs: `index` is a tuple of slices of the global shape.
    This is how each process loads only its shard of a data set:

    ```python
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
    X = nd.distributed.global_array(lambda index: read_rows(path, index[0]), sharding, shape=(N, d))
    ```
    """
    import numpy as np

    if callable(local):
        if shape is None:
            raise ValueError("global_array: a loader function needs the global `shape`")
        return jax.make_array_from_callback(tuple(shape), sharding, local)
    host = np.asarray(local)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


# ---------------------------------------------------------------------------------------
# One line instead of JAX's abort page when another process dies.
# ---------------------------------------------------------------------------------------

_FILTER = r"""
import os, re, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process reports Ctrl-C; we pass it on
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and exit at end of input (the main process gone)
tag, message, markers = sys.argv[1], sys.argv[2], sys.argv[3].split("\x1f")
out = os.fdopen(2, "wb", buffering=0)
inp = sys.stdin.buffer.raw
glog = re.compile(rb"^[EWF]\d{4} [\d:.]+ +\d+ (coordination_service|coordination_service_agent|preemption_sync_manager|client|pair|distributed)[\w.]*:\d+\]")
held, holding, done, buf = [], False, False, b""

def emit(lines):
    for l in lines:
        out.write(l)

def finish(text):
    global done, held
    why = "JAX distributed service"
    for key, short in (("stopped sending heartbeats", "missed heartbeats"), ("Socket closed", "coordinator gone"),
                       ("Connection reset", "connection reset"), ("Gloo", "collective failed")):
        if key in text:
            why = short
            break
    out.write(f"error: {tag}: {message.format(why=why)}\n".encode())
    held, done = [], True

while True:
    ready, _, _ = select.select([inp], [], [], 2.0 if holding else None)
    if not ready:  # held lines with no fatal error after them: they were only warnings
        emit(held); held, holding = [], False
        continue
    chunk = os.read(inp.fileno(), 65536)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for raw in lines:
        line = raw + b"\n"
        if done:
            continue
        text = line.decode(errors="replace")
        if text.startswith(f"error: {tag}: "):  # the main process said it already (its exception hook)
            out.write(line); done = True
            continue
        if any(m in text for m in markers) and (holding or glog.match(raw) or "Terminating process" in text):
            finish("".join(l.decode(errors="replace") for l in held) + text)
            continue
        if glog.match(raw) or (holding and not raw.startswith(b"[")):
            held.append(line); holding = True
            continue
        if holding:
            emit(held); held, holding = [], False
        out.write(line)
if not done:
    emit(held)
    out.write(buf)
"""


def _tidy_stderr(tag: str) -> None:
    """Routes fd 2 through a filter process that turns JAX's abort page into one line, and
    installs an exception hook that does the same for a collective that fails in Python."""
    try:
        sys.stderr.flush()
        filt = subprocess.Popen(
            [sys.executable, "-c", _FILTER, tag, _PEER_LOST, "\x1f".join(_FATAL_MARKERS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
        assert filt.stdin is not None  # stdin=PIPE
        os.dup2(filt.stdin.fileno(), 2)
        filt.stdin.close()
    except OSError:
        return  # no filter: JAX's own messages then
    previous = sys.excepthook

    def hook(kind, value, tb):
        text = f"{kind.__name__}: {value}"
        if issubclass(kind, jax.errors.JaxRuntimeError) and any(m in text for m in _FATAL_MARKERS):
            why = "connection reset" if "Connection reset" in text else "collective failed"
            print(f"error: {tag}: {_PEER_LOST.format(why=why)}", file=sys.stderr, flush=True)
            os._exit(1)
        previous(kind, value, tb)

    sys.excepthook = hook
