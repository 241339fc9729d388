"""Integration options shared by `relax`, `rollout` and `value_and_grad`.

The keywords are `solver` (a diffrax solver), `dt0`, `rtol`, `atol`, `max_steps` and, for
steady states, `relaxation` (an `nd.relaxation` strategy). Unset
ones take defaults that depend on the activity (steady state or trajectory) and on the
floating dtype of the network, so that the same call works in float32 and in float64.
"""

import difflib
import functools
from typing import TYPE_CHECKING

import diffrax
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._misc import BoundedCache, cache_key, matmul_roundoff


if TYPE_CHECKING:
    # Imported lazily at run time: the relaxation strategies take these options.
    from .relaxation import AbstractRelaxation


OPTION_NAMES = ("solver", "dt0", "rtol", "atol", "max_steps", "relaxation")


class IntegrationOptions(eqx.Module):
    """Resolved integration options (all set)."""

    solver: diffrax.AbstractSolver
    dt0: float = eqx.field(static=True)
    rtol: float
    atol: float
    max_steps: int = eqx.field(static=True)
    # None: the steady-state default (`relax_loop` picks `FixedStep` when it is
    # differentiated through, as BPTT does).
    relaxation: "AbstractRelaxation | None" = None


def _tolerances(dtype) -> tuple[float, float]:
    # float32: the residual's rounding floor is ~1e-7 of the state, so 1e-5 is reachable;
    # float64: tight enough for EP's finite difference at beta ~ 1e-3 (error ~ tol / beta).
    # Floored at 8x the rounding of the matrix products that compute F (TF32 on a GPU by
    # default: rtol 3.9e-3), so that the defaults converge under any matmul precision.
    rtol, atol = (1e-10, 1e-12) if jnp.dtype(dtype) == jnp.float64 else (1e-5, 1e-6)
    u = matmul_roundoff(dtype)
    return max(rtol, 8 * u), max(atol, 0.8 * u)


def check_option_names(options: dict) -> None:
    for name in options:
        if name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise TypeError(f"Unknown integration option `{name}`.{hint} The options are {', '.join(OPTION_NAMES)}.")


def _memoised(resolve):
    """`resolve(dtype, **given)` cached per (dtype, options, matmul precision, backend), the
    inputs it depends on: resolving and validating the options cost 0.06 ms in every
    unjitted call. Unhashable options (an array tolerance) are resolved every time; the
    result is an immutable module, so sharing it is safe."""
    cache = BoundedCache(1024)

    @functools.wraps(resolve)
    def wrapper(dtype, **given):
        def key():
            precision = getattr(jax.config, "jax_default_matmul_precision", None)
            return (jnp.dtype(dtype), tuple(sorted(given.items())), precision, jax.default_backend())

        return cache.get(cache_key(key), lambda: resolve(dtype, **given))

    return wrapper


@_memoised
def steady_state_options(
    dtype, *, solver=None, dt0=None, rtol=None, atol=None, max_steps=None, relaxation=None
) -> IntegrationOptions:
    """Defaults for relaxation to a steady state: Euler, `dt0 = 1`, tolerances by dtype
    (float32 1e-5 / 1e-6, float64 1e-10 / 1e-12), floored at 8x the rounding of the matrix
    products under the matmul precision in effect (TF32 on a GPU by default: 3.9e-3).

    The steady state is a zero of `F` whatever the solver, so the cheapest stable one wins.
    For `dr/dt = -r + ...` networks Euler with `dt0 = 1` is the fixed-point iteration
    `r <- f(W r + U x + b)`, stable whenever the map contracts (the default gains); pass a
    smaller `dt0` for stiffer networks (time constants below 1).

    `relaxation` (an `nd.relaxation` strategy, default `FixedStep(check_every=2)`) decides how those
    solver steps are combined; see `nd.relaxation`."""
    from .relaxation import AbstractRelaxation

    if relaxation is not None and not isinstance(relaxation, AbstractRelaxation):
        raise ValueError(
            "`relaxation` must be an nd.relaxation strategy such as "
            f"nd.relaxation.FixedStep() or nd.relaxation.Anderson(), got {relaxation!r}."
        )
    opts = _resolve(dtype, diffrax.Euler(), 1.0, 10_000, solver, dt0, rtol, atol, max_steps)
    return IntegrationOptions(opts.solver, opts.dt0, opts.rtol, opts.atol, opts.max_steps, relaxation)


@_memoised
def trajectory_options(
    dtype, *, solver=None, dt0=None, rtol=None, atol=None, max_steps=None, relaxation=None
) -> IntegrationOptions:
    """Defaults for a trajectory: Tsit5 with fixed steps of at most `dt0 = 0.1`.

    Trajectories are integrated with fixed steps (so BPTT and RTRL differentiate the same
    discretisation); `rtol`/`atol` only matter to steady states and are kept for symmetry."""
    if relaxation is not None:
        raise ValueError(
            "`relaxation` chooses how a steady state is found and does not apply to a "
            "trajectory (nd.rollout, nd.Trajectory). Drop `relaxation=`."
        )
    return _resolve(dtype, diffrax.Tsit5(), 0.1, 100_000, solver, dt0, rtol, atol, max_steps)


def _resolve(dtype, default_solver, default_dt0, default_max_steps, solver, dt0, rtol, atol, max_steps):
    drtol, datol = _tolerances(dtype)
    opts = IntegrationOptions(
        solver=default_solver if solver is None else solver,
        dt0=default_dt0 if dt0 is None else float(dt0),
        rtol=drtol if rtol is None else rtol,
        atol=datol if atol is None else atol,
        max_steps=default_max_steps if max_steps is None else int(max_steps),
    )
    _validate(opts)
    return opts


def _validate(opts: IntegrationOptions) -> None:
    if not isinstance(opts.solver, diffrax.AbstractSolver):
        raise ValueError(f"`solver` must be a diffrax solver such as `diffrax.Euler()`, got {opts.solver!r}.")
    if not opts.dt0 > 0:
        raise ValueError(f"`dt0` must be positive, got dt0={opts.dt0}.")
    if opts.max_steps < 1:
        raise ValueError(f"`max_steps` must be at least 1, got {opts.max_steps}.")
    for name in ("rtol", "atol"):
        value = getattr(opts, name)
        if isinstance(value, jax.core.Tracer):  # a swept tolerance: traced, not checked
            continue
        if not (np.ndim(value) == 0 and np.isfinite(value) and value >= 0):
            raise ValueError(
                f"`{name}` must be a finite number >= 0, got {name}={value!r}: the relaxation stops when "
                "the residual's RMS norm is at most atol + rtol * RMS(r)."
            )
