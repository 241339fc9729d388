"""Sweeps as one computation: the numeric axes of a sweep (seeds, learning rates, EP's beta,
tolerances) are stacked and run by ONE jitted, vmapped function, sharded over all devices;
static axes (sizes, estimator classes) are a Python `grid` with one compile each.

```python
points = nd.sweeps.product(seed=[0, 1, 2, 3], learning_rate=[1e-3, 1e-2])   # 8 points

def train_one(point):                     # one point: a dict of scalars (traced)
    est = nd.sweeps.with_values(nd.EP(), {"beta": point["beta"]})   # array fields only
    opt = nd.config.optimizer("sgd", point["learning_rate"])       # traced learning rate
    ...
    return dict(loss=..., accuracy=...)   # a pytree of arrays

results = nd.sweeps.run(train_one, points)          # each leaf has a leading axis of 8
```

Why this compiles once: the swept numbers are traced arrays, never Python constants, so
`jit(vmap(fn))` sees one shape per grid cell. Estimator fields a sweep varies (EP's `beta`,
an adjoint's `rtol`) are array fields of the estimator modules for this reason; `with_values`
puts the traced values into them.

Devices: the sweep axis is padded to a multiple of the device count (the padding repeats the
last point and is dropped from the result) and sharded with
`NamedSharding(Mesh(devices, ("sweep",)), PartitionSpec("sweep"))`: the points run in
parallel on all local devices (GPUs, or CPU devices forced with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`).

Multi-process (several hosts, or several processes on one): every experiment takes
`--distributed` (`nd.config.cli` calls `nd.distributed.initialize` before anything touches
JAX; under SLURM the coordinator address, process count and index come from the job's
environment, elsewhere give `--coordinator-address HOST:PORT --num-processes N --process-id I`):

```bash
#SBATCH --nodes=4 --ntasks-per-node=1 --gpus-per-node=4
srun python -m experiments.sweep --config configs/sweep_double_moon.yaml --distributed
```

`jax.devices()` then spans every process; every process builds the same points from the
config, feeds its own devices' shards (`jax.make_array_from_callback`), and the results are
gathered to every process (`multihost_utils.process_allgather`); only process 0 writes
(`nd.runs.RunDir`). With the same device layout the results are bitwise those of one process
(tests/test_distributed.py runs 2 processes x 2 CPU devices against 1 process x 4 devices).
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def product(**axes) -> dict[str, np.ndarray]:
    """The Cartesian product of named 1-D axes, as flat arrays (one entry per point; the
    last axis varies fastest)."""
    names = list(axes)
    combos = list(itertools.product(*[list(np.asarray(v).tolist()) for v in axes.values()]))
    return {k: np.asarray([c[i] for c in combos]) for i, k in enumerate(names)}


def n_points(points) -> int:
    """The number of points of a sweep (all axes must have the same length)."""
    if not points:
        raise ValueError("a sweep needs at least one axis, e.g. nd.sweeps.product(seed=[0, 1, 2]); got no axes")
    sizes = {len(np.asarray(v)) for v in points.values()}
    if len(sizes) != 1:
        raise ValueError(f"sweep axes must all have the same length, got {sorted(sizes)}")
    return sizes.pop()


def with_values(obj, values: dict):
    """`obj` (an equinox module, e.g. an estimator) with the fields named by the (dotted)
    keys of `values` replaced: `with_values(nd.EP(), {"beta": b})`,
    `with_values(nd.RBP(), {"adjoint.rtol": tol})`.

    The new values are cast to the old field's dtype when it is an array. Use it inside a
    swept function so that the values are traced: a field marked static cannot hold a traced
    value and raises a `ValueError` here.
    """
    for name, value in values.items():
        parts = name.split(".")
        target = obj
        for part in parts:
            if not hasattr(target, part):
                raise ValueError(f"{type(obj).__name__} has no field '{name}' to sweep")
            parent, target = target, getattr(target, part)
        static = {
            f.name for f in getattr(type(parent), "__dataclass_fields__", {}).values() if f.metadata.get("static")
        }
        if parts[-1] in static:
            raise ValueError(
                f"'{name}' is a static field of {type(parent).__name__}: a sweep can only vary array fields; "
                "put it in the config's grid: section instead (one compile per value)"
            )
        value = jnp.asarray(value, dtype=target.dtype) if eqx.is_array(target) else jnp.asarray(value)

        def where(m, parts=parts):
            for part in parts:
                m = getattr(m, part)
            return m

        obj = eqx.tree_at(where, obj, value, is_leaf=lambda x: x is None)
    return obj


def sample_without_replacement(key, n: int, k: int):
    """`k` distinct indices in `[0, n)`, every `k`-subset equally likely: the mini-batch
    indices of a training run inside a swept (vmapped) function, drawn in `O(k^2)` work
    rather than `O(n)`.

    Floyd's algorithm (Bentley & Floyd, 1987): for `j = n - k, ..., n - 1` draw `t` uniform
    in `[0, j]` and take `t`, or `j` when `t` was taken already. `k` integers from one
    `jax.random.randint` call, then `k` rounds that compare with the `k` slots. The set is
    uniform; its order is not (a later index is likelier to be a replacing `j`): a batch
    used as a set, as a mean gradient uses it, does not care. Shuffle it
    (`jax.random.permutation`) where the order matters.

    Why not `jax.random.choice(key, n, (k,), replace=False)`: it draws one 32-bit key per
    element and sorts the `n` indices by them. Vmapped over a sweep's points, XLA's CPU
    backend runs that sort through its generic comparator, about 80 ns an element: half the
    time of a 64-point sweep of small networks (`experiments.benchmarks.sweep`); selecting
    the same `k` indices by `k` rounds of reductions over the `n` keys still cost a sixth of
    it. This costs a tenth of that. For `k > 64` (`O(k^2)` comparisons per draw) it calls
    `jax.random.choice`.
    """
    n, k = int(n), int(k)
    if not 0 <= k <= n:
        raise ValueError(f"cannot take {k} of {n} elements without replacement")
    if k > 64:
        return jax.random.choice(key, n, (k,), replace=False)
    last = jnp.arange(n - k, n)  # j of each round
    if k == 0:
        return last
    t = jax.random.randint(key, (k,), 0, last + 1)

    def take(r, taken):  # the slots not yet filled hold -1, never an index
        return taken.at[r].set(jnp.where(jnp.any(taken == t[r]), last[r], t[r]))

    # Unrolled for a mini-batch's size (0.63 against 0.93 ms for 64 points x 20 draws of
    # 16); a loop past that, where unrolling costs more compilation than it saves.
    return jax.lax.fori_loop(0, k, take, jnp.full((k,), -1, t.dtype), unroll=True if k <= 16 else 1)


def run(fn, points: dict, *, devices=None):
    """Runs `fn(point)` for every point as one `jit(vmap(fn))`, the sweep axis sharded over
    `devices`.

    **Arguments:**

    - `fn`: takes a dict of scalar arrays (one entry per axis) and returns a pytree of arrays.
    - `points`: a dict of equal-length 1-D arrays (`product(...)`).
    - `devices`: default `jax.devices()` (all devices of all processes; under
      `jax.distributed` every process calls `run` with the same points). A list of this
      process's devices (`jax.local_devices()`) runs the points in this process alone.

    **Returns:** the pytree of `fn`'s outputs, each leaf with a leading axis of length
    `n_points(points)`.

    The sweep axis is padded to a multiple of the device count by repeating the last point;
    the padded results are dropped. `fn` is traced once per distinct `fn` and point dtypes.
    """
    devices = jax.devices() if devices is None else list(devices)
    P = n_points(points)
    D = len(devices)
    padded = math.ceil(P / D) * D
    mesh = Mesh(np.asarray(devices), ("sweep",))
    sharding = NamedSharding(mesh, PartitionSpec("sweep"))
    host = {k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[-1:], padded - P)]) for k, v in points.items()}
    # Every process holds all points; each supplies the shards of its own devices.
    stacked = {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index]) for k, v in host.items()}
    out = _call(fn, stacked)
    if not all(a.is_fully_addressable for a in jax.tree.leaves(out)):  # devices of other processes
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda a: a[:P], out)


@eqx.filter_jit
def _call(fn, stacked):
    return jax.vmap(fn)(stacked)
