"""Sweeps as one computation: the numeric axes of a sweep (seeds, learning rates, beta,
tolerances) are stacked and run by ONE jitted, vmapped function, sharded over all local
devices; static axes (sizes, estimator classes) are a Python `grid` with one compile each.

```python
points = nd.sweeps.product(seed=[0, 1, 2, 3], learning_rate=[1e-3, 1e-2])   # 8 points
results = nd.sweeps.run(train_one, points)          # train_one(point) -> pytree of arrays
```

Multi-host: call `jax.distributed.initialize()` first (under SLURM it reads the job's
environment: `srun python -m experiments.sweep ...`); `jax.devices()` then spans every host,
the sweep axis is sharded across all of them, and only process 0 writes (`nd.runs.RunDir`).
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def product(**axes) -> dict[str, np.ndarray]:
    """The Cartesian product of named 1-D axes, as flat arrays (one entry per point)."""
    names = list(axes)
    combos = list(itertools.product(*[list(np.asarray(v).tolist()) for v in axes.values()]))
    return {k: np.asarray([c[i] for c in combos]) for i, k in enumerate(names)}


def n_points(points) -> int:
    sizes = {len(np.asarray(v)) for v in points.values()}
    if len(sizes) != 1:
        raise ValueError(f"sweep axes must all have the same length, got {sorted(sizes)}")
    return sizes.pop()


def run(fn, points: dict, *, devices=None):
    """Runs `fn(point)` for every point as one `jit(vmap(fn))`, the sweep axis sharded over
    `devices` (default: all of them), padded to a multiple of the device count.

    `fn` takes a dict of scalars (one entry per axis) and returns a pytree of arrays; the
    result has a leading axis of length `n_points(points)`."""
    devices = jax.devices() if devices is None else devices
    P = n_points(points)
    D = len(devices)
    padded = math.ceil(P / D) * D
    stacked = {k: jnp.asarray(np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[-1:], padded - P)])) for k, v in points.items()}
    mesh = Mesh(np.asarray(devices), ("sweep",))
    sharding = NamedSharding(mesh, PartitionSpec("sweep"))
    stacked = jax.device_put(stacked, sharding)
    out = _vmapped(fn)(stacked)
    return jax.tree.map(lambda a: a[:P], out)


@eqx.filter_jit
def _call(fn, stacked):
    return jax.vmap(fn)(stacked)


def _vmapped(fn):
    return lambda stacked: _call(fn, stacked)
