import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, DTypeLike, PyTree

from ._custom_types import Array


class BoundedCache:
    """Values of a pure function of hashable keys, for the Python-side work an unjitted
    entry point would otherwise repeat on every call (tracing `init_state` for a shape,
    resolving options, checking a batch's examples).

    Holds at most `size` entries and starts over when full. A key of `None` (see `cache_key`)
    is never cached: the value is computed every time."""

    def __init__(self, size: int):
        self.size = size
        self._entries: dict[Any, Any] = {}

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key is not None and key in self._entries:
            return self._entries[key]
        value = compute()
        if key is not None:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = value
        return value


class _Traced:
    """The placeholder of a traced (array) leaf among `entry_jit`'s static leaves."""

    def __repr__(self):
        return "<traced>"


_TRACED = _Traced()


def entry_jit(fn: Callable) -> Callable:
    """`eqx.filter_jit(fn)` for neurodyn's entry points: array leaves of the arguments are
    traced, every other leaf is static (hashed, a new trace per new value), as with
    `eqx.filter_jit`, with a leaner dispatch: one flatten of the arguments, then `jax.jit`'s
    own cache. From plain Python that is about 0.1 ms less per call on the CPU
    (`python -m experiments.benchmark --sections overhead`), where a small problem's whole
    computation takes a few tenths. `fn` must return a pytree of arrays."""

    @functools.partial(jax.jit, static_argnums=0)
    def traced(static, leaves):
        treedef, statics = static
        it = iter(leaves)
        return fn(*jax.tree.unflatten(treedef, [next(it) if s is _TRACED else s for s in statics]))

    @functools.wraps(fn)
    def call(*args):
        leaves, treedef = jax.tree.flatten(args)
        statics = tuple(_TRACED if eqx.is_array(leaf) else leaf for leaf in leaves)
        arrays = [leaf for leaf, s in zip(leaves, statics) if s is _TRACED]
        return traced((treedef, statics), arrays)

    return call


def cache_key(make: Callable[[], Any]) -> Any:
    """`make()` when it builds a hashable key; `None` (no caching) when a part of it is not
    hashable (an array leaf in a static position, an array tolerance)."""
    try:
        key = make()
        hash(key)
    except TypeError:
        return None
    return key


def all_finite(tree: PyTree) -> Bool[Array, ""]:
    """Whether every entry of every inexact array leaf of `tree` is finite.

    One fused reduction per leaf, the largest magnitude: XLA's `max` propagates NaN and an
    infinity stays infinite, so it is finite exactly when every entry is. (`isfinite` then
    `all` ran as three kernels per leaf on the CPU, and these checks sit in every
    estimator's `info`.)"""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if eqx.is_inexact_array(leaf) and leaf.size]
    if not leaves:
        return jnp.asarray(True)
    peaks = [jnp.max(jnp.abs(leaf)) for leaf in leaves]
    # Leaves of several float types (a training state's parameters and a float32 counter):
    # compared in the widest, which holds every narrower value exactly.
    wide = max((p.dtype for p in peaks), key=lambda d: d.itemsize)
    return jnp.isfinite(functools.reduce(jnp.maximum, [p.astype(wide) for p in peaks]))


# The unit roundoff of a float32 matrix product under each `jax.default_matmul_precision`,
# per backend: a GPU's default runs float32 products in TF32 (10-bit mantissa), a TPU's in one
# bfloat16 pass (7 bits), three passes for "high"; a CPU always in float32.
_F32_PRODUCT_ROUNDOFF = {
    "gpu": {"default": 2.0**-11, "high": 2.0**-11, "highest": 2.0**-24},
    "tpu": {"default": 2.0**-8, "high": 2.0**-16, "highest": 2.0**-24},
}
_PRECISION_NAMES = {
    None: "default",
    "default": "default",
    "fastest": "default",
    "bfloat16": "default",
    "high": "high",
    "tensorfloat32": "high",
    "bfloat16_3x": "high",
    "highest": "highest",
    "float32": "highest",
}


def matmul_roundoff(dtype: DTypeLike) -> float:
    """The unit roundoff of a matrix product in `dtype` on the default backend, under the
    matmul precision in effect (`jax.default_matmul_precision`, or the
    `JAX_DEFAULT_MATMUL_PRECISION` environment variable).

    A convergence test below the rounding of the products that compute `F` can never pass:
    the default tolerances are floored by this (float32 on a GPU's default TF32: 2^-11, where
    the float32 default `rtol = 1e-5` sat below the floor and every relaxation ran into its
    stagnation test). Read at trace time; a static Python float."""
    eps = float(jnp.finfo(dtype).eps) / 2
    if jnp.finfo(dtype).bits > 32:
        return eps  # float64 products run in float64 on every backend
    precision = getattr(jax.config, "jax_default_matmul_precision", None)  # context-aware
    level = _PRECISION_NAMES.get(precision if isinstance(precision, str) else None, "default")
    table = _F32_PRODUCT_ROUNDOFF.get(jax.default_backend())
    return eps if table is None else max(eps, table[level])


def rms_norm(x: Array) -> Array:
    """Root-mean-square norm, the norm of every convergence test in neurodyn.

    One reduction over `x` (it runs twice per relaxation step, and a second pass for a
    scale cost a vmapped sweep a fifth of its time). Non-finite entries give inf, and so
    does a finite `x` whose squares overflow (entries beyond about 1e19 in float32, 1e154
    in float64): an infinite norm always reads as divergence, never as convergence
    (`nd.iterate` takes an infinite tolerance, which such a norm makes, as an infinite
    residual). Safe at zero: its gradient there is zero, not NaN."""
    x = jnp.asarray(x)
    dtype = jnp.finfo(x.dtype).dtype  # the real dtype, also of a complex x
    # Half precision squares in float32 (its own range ends at 65504).
    if jnp.finfo(dtype).bits < 32:
        x = x.astype(jnp.complex64 if jnp.iscomplexobj(x) else jnp.float32)
    # Complex states (holomorphic EP) are measured by their modulus.
    sq = jnp.square(x.real) + jnp.square(x.imag) if jnp.iscomplexobj(x) else jnp.square(x)
    ms = jnp.mean(sq)
    # NaN stays NaN through this guard (`ms == 0` is false for it) and becomes inf below.
    safe = jnp.where(ms == 0, 1, ms)
    value = jnp.where(ms == 0, 0, jnp.sqrt(safe)).astype(dtype)
    return jnp.where(jnp.isfinite(value), value, jnp.inf)


def default_floating_dtype() -> np.dtype:
    return jnp.zeros(()).dtype if jnp.zeros(()).dtype.kind == "f" else jnp.dtype(jnp.float32)


def tree_dtype(tree: PyTree[Any]) -> np.dtype:
    """The floating dtype of the first inexact leaf of ``tree``.

    Read from the leaves directly: `eqx.filter` would rebuild every Module of the tree, tens
    of microseconds in each top-level call (`nd.relax`, `nd.batch_value_and_grad`)."""
    import equinox as eqx
    import jax.tree_util as jtu

    for leaf in jtu.tree_leaves(tree):
        if eqx.is_inexact_array(leaf):
            return leaf.dtype
    return jnp.result_type(float)


def planned_peak_bytes(fn: Callable[..., Any], *args: Any) -> int | None:
    """Peak memory XLA plans for a jitted `fn(*args)` (arguments + outputs + temporaries),
    in bytes; works for `jax.jit` and `eqx.filter_jit` functions. None where the backend
    does not report it."""
    try:
        compiled = fn.lower(*args).compile()
        compiled = getattr(compiled, "compiled", compiled)  # eqx.filter_jit wraps jax's
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        return None
    if mem is None:
        return None
    return int(mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes)


def tree_cast(tree: PyTree[Any], dtype: DTypeLike) -> PyTree[Any]:
    """Casts the floating-point leaves of `tree` (e.g. a network) to `dtype`."""
    import equinox as eqx
    import jax

    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def batch_mean(tree: PyTree[Any]) -> PyTree[Any]:
    """The mean over the leading (batch) axis of every array leaf, as a matrix-vector product.

    Averaging vmapped per-example gradients with `jnp.mean(g, 0)` makes XLA's CPU backend
    emit a slow reduction for (B, n, n) weight gradients (20 ms against 3 ms at B = 32,
    n = 256); a product with the vector `1/B` runs as a GEMV."""
    import jax
    import jax.numpy as jnp

    def mean(a):
        if not hasattr(a, "shape") or a.ndim == 0:
            return a
        B = a.shape[0]
        return (jnp.full((B,), 1.0 / B, a.dtype) @ a.reshape(B, -1)).reshape(a.shape[1:])

    return jax.tree.map(mean, tree)
