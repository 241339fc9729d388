"""Estimator fidelity: how close each gradient estimator is to the exact gradient.

The exact reference is computed independently of every estimator:

- steady state: a dense implicit-function-theorem solve. `r*` from a tight relaxation
  polished by Newton steps with the dense Jacobian; `v = -J^-T (dl/dr*)^T`;
  `dl/dw = v^T dF/dw + dl/dw|_readout`. O(n^3): small n only.
- trajectory: `jax.grad` through a fine fixed-step RK4 `lax.scan` of the same dynamics.

Run it in float64 (`jax.config.update("jax_enable_x64", True)`) for a trustworthy reference.
"""

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real, Shaped

from ._batch import batch_value_and_grad
from ._custom_types import Grads, Info, Target
from ._dynamics import check_input, relax_loop, time_grid
from ._misc import planned_peak_bytes, tree_dtype
from ._objectives import AbstractObjective, SteadyState, Trajectory
from ._options import steady_state_options
from .estimators import AbstractEstimator
from .networks import AbstractNetwork


# ---------------------------------------------------------------------------------------
# Exact references
# ---------------------------------------------------------------------------------------


def _steady_state_reference(net, x, y, objective: SteadyState, newton_steps: int = 8):
    dtype = tree_dtype(net)
    opts = steady_state_options(
        dtype,
        rtol=1e-12 if dtype == jnp.float64 else 1e-6,
        atol=1e-13 if dtype == jnp.float64 else 1e-7,
        max_steps=100_000,
    )
    r, _ = relax_loop(net, x, net.init_state(x), opts)

    def F(r):
        return net(0.0, r, x)

    def newton(r, _):
        J = jax.jacfwd(F)(r)
        return r - jnp.linalg.solve(J, F(r)), None

    r, _ = jax.lax.scan(newton, r, None, length=newton_steps)
    J = jax.jacfwd(F)(r)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss_of(p, r):
        return objective.value(eqx.combine(p, static), r, y)

    loss, (g_direct, dl_dr) = jax.value_and_grad(loss_of, argnums=(0, 1))(params, r)
    v = jnp.linalg.solve(J.T, -dl_dr)
    _, vjp = jax.vjp(lambda p: eqx.combine(p, static)(0.0, r, x), params)
    (g_dyn,) = vjp(v)
    grads = jtu.tree_map(lambda a, b: a + b, g_direct, g_dyn)
    return loss, grads


def _trajectory_reference(net, xs, y, objective: Trajectory, substeps: int = 100):
    grid = time_grid(objective.ts, 1.0, 10**9, xs.dtype)
    n_sub = grid.n_sub * substeps

    def run(net):
        def interval(r, inp):
            x, t0, dt = inp
            h = dt / substeps

            def rk4(r, _):
                def f(r):
                    return net(0.0, r, x)

                k1 = f(r)
                k2 = f(r + 0.5 * h * k1)
                k3 = f(r + 0.5 * h * k2)
                k4 = f(r + h * k3)
                return r + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

            r, _ = jax.lax.scan(rk4, r, None, length=n_sub)
            return r, r

        dts = grid.dts * grid.n_sub
        _, rs = jax.lax.scan(interval, net.init_state(xs[0]), (xs, grid.t0s, dts))
        return objective.value(net, rs, y)

    return eqx.filter_value_and_grad(run)(net)


def reference_gradient(
    net: AbstractNetwork, x: Real[ArrayLike, "*T n_in"], y: Target, objective: AbstractObjective
) -> tuple[Float[Array, ""], Grads]:
    """The exact `(loss, dl/dw)` for one example, independent of every estimator."""
    if isinstance(objective, SteadyState):
        x, y = objective.check_data(net, x, y)
        return eqx.filter_jit(_steady_state_reference)(net, x, y, objective)
    if isinstance(objective, Trajectory):
        x, y = objective.check_data(net, x, y)
        return eqx.filter_jit(_trajectory_reference)(net, x, y, objective)
    raise ValueError(f"no exact reference for objective {objective!r}")


def batch_reference(
    net: AbstractNetwork,
    xs: Real[Array | np.ndarray, "B *T n_in"],
    ys: Shaped[Array | np.ndarray, "B ..."],
    objective: AbstractObjective,
) -> tuple[Float[Array, ""], Grads]:
    """Mean loss and mean exact gradient over a batch."""
    losses, grads = [], []
    for x, y in zip(xs, ys):
        loss, g = reference_gradient(net, x, y, objective)
        losses.append(loss)
        grads.append(g)
    mean = jtu.tree_map(lambda *g: sum(g) / len(g), *grads)
    return jnp.mean(jnp.stack(losses)), mean


# ---------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------


def _leaves_with_paths(tree):
    flat, _ = jtu.tree_flatten_with_path(eqx.filter(tree, eqx.is_inexact_array))
    return [(jtu.keystr(path), leaf) for path, leaf in flat]


def flatten(grads: Grads) -> Float[Array, " m"]:
    """All gradient leaves as one vector."""
    return jnp.concatenate([jnp.ravel(leaf) for _, leaf in _leaves_with_paths(grads)])


def compare(grads: Grads, reference: Grads) -> dict[str, float]:
    """Fidelity of `grads` against `reference`: cosine similarity, relative error
    `||g - g*|| / ||g*||`, sign agreement (fraction of entries with the same sign, over
    entries where the reference is not negligible), and the same per parameter leaf."""
    g, r = np.asarray(flatten(grads), np.float64), np.asarray(flatten(reference), np.float64)
    out = dict(_stats(g, r))
    for (path, a), (_, b) in zip(_leaves_with_paths(grads), _leaves_with_paths(reference)):
        stats = _stats(np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64)))
        out[f"rel_error{path}"] = stats["rel_error"]
        out[f"cosine{path}"] = stats["cosine"]
    return out


def _stats(g, r):
    nr, ng = np.linalg.norm(r), np.linalg.norm(g)
    cosine = float(g @ r / (ng * nr)) if ng > 0 and nr > 0 else float("nan")
    rel = float(np.linalg.norm(g - r) / nr) if nr > 0 else float("nan")
    big = np.abs(r) > 1e-8 * (np.max(np.abs(r)) if r.size else 0.0)
    sign = float(np.mean(np.sign(g[big]) == np.sign(r[big]))) if np.any(big) else float("nan")
    return dict(cosine=cosine, rel_error=rel, sign_agreement=sign)


def alignment_matrix(grads: dict[str, Grads]) -> tuple[list[str], Float[np.ndarray, "k k"]]:
    """The pairwise cosine between every two gradients (Marschall et al. 2020)."""
    names = list(grads)
    vecs = [np.asarray(flatten(grads[k]), np.float64) for k in names]
    M = np.array([[a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in vecs] for a in vecs])
    return names, M


# ---------------------------------------------------------------------------------------
# Measuring one estimator on one batch
# ---------------------------------------------------------------------------------------


def batch_estimate(
    estimator: AbstractEstimator, objective: AbstractObjective, **options: Any
) -> Callable[[AbstractNetwork, Array, Array], tuple[Float[Array, ""], Grads, Info]]:
    """A jitted function `(net, xs, ys) -> (mean loss, mean grads, info)` for a batch
    (`nd.batch_value_and_grad`)."""

    @eqx.filter_jit
    def run(net, xs, ys):
        return batch_value_and_grad(net, xs, ys, objective=objective, estimator=estimator, **options)

    return run


def measure(
    estimator: AbstractEstimator,
    net: AbstractNetwork,
    xs: Real[Array, "B *T n_in"],
    ys: Shaped[Array, "B ..."],
    objective: AbstractObjective,
    *,
    repeats: int = 3,
    **options: Any,
) -> dict[str, Any]:
    """Runs `estimator` on the batch and reports the gradient, wall time (median of
    `repeats`), compile time (first call minus one run) and XLA's planned peak memory."""
    for x in xs[:1]:
        check_input(net, x, sequence=isinstance(objective, Trajectory))
    fn = batch_estimate(estimator, objective, **options)
    t0 = time.perf_counter()
    loss, grads, info = jax.block_until_ready(fn(net, xs, ys))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(net, xs, ys))
        times.append(time.perf_counter() - t0)
    wall = float(np.median(times))
    peak = planned_peak_bytes(fn, net, xs, ys)
    converged = float(np.mean(np.asarray(info["converged"])))
    return dict(
        loss=float(loss),
        grads=grads,
        time_s=wall,
        compile_s=max(first - wall, 0.0),
        peak_bytes=peak,
        converged_fraction=converged,
    )
