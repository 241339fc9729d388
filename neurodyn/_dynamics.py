"""Forward dynamics on diffrax: relaxation to a steady state and trajectory rollouts.

Both drive a diffrax solver's `step` directly inside `lax`/equinox loops with fixed steps,
rather than through `diffeqsolve`: on these problems the adaptive machinery costs far more
than the vector field (measured 30-50x off the device on a GPU; see the README's speed section), and a fixed-step loop
is what BPTT and RTRL differentiate exactly.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Real

from ._custom_types import Info, Input, Readout, State, Time, Times
from ._misc import all_finite, BoundedCache, cache_key, entry_jit, rms_norm, tree_dtype
from ._options import (
    check_option_names,
    IntegrationOptions,
    steady_state_options,
    trajectory_options,
)
from ._outcome import RESULTS
from .adjoint import AbstractAdjointSolve, AdjointODE
from .networks import AbstractEnergyNetwork, AbstractNetwork


def _vector_field(t, r, args):
    net, x = args
    return net(t, r, x)


_TERM = diffrax.ODETerm(_vector_field)


def solver_step(solver, net, r, x, t0, dt, solver_state, made_jump):
    """One step of `solver` on `dr/dt = F(r, w, x)` from `t0` to `t0 + dt`."""
    r1, _, _, solver_state, _ = solver.step(_TERM, t0, t0 + dt, r, (net, x), solver_state, made_jump)
    return r1, solver_state


def solver_init(solver, net, r, x, t0, dt):
    return solver.init(_TERM, t0, t0 + dt, r, (net, x))


# ----------------------------------------------------------------------------------------
# Relaxation to a steady state
# ----------------------------------------------------------------------------------------


def _default_relaxation():
    from .relaxation import FixedStep

    # Chosen by measurement (see nd.relaxation.FixedStep and the README's relaxation table):
    # Anderson needed as many steps as the plain iteration at dt0 = 1 and cost 2x per step.
    return FixedStep(check_every=2)


def relax_loop(
    net: AbstractNetwork,
    x: Input,
    r0: State,
    opts: IntegrationOptions,
    *,
    kind: Literal["lax", "checkpointed", "bounded"] = "lax",
    checkpoints: int | None = None,
    forcing: Callable[[State], State] | None = None,
) -> tuple[State, Info]:
    """Relaxes until `rms(F(r)) < atol + rtol rms(r)` or `max_steps`, with the strategy
    `opts.relaxation` (`None`: the default `FixedStep(check_every=2)`, or `FixedStep()`
    when differentiated through).

    `forcing`, if given, is a function `r -> extra drift` added to `F` (EP's nudging).
    `kind` is the equinox while-loop kind: `"lax"` (no reverse mode, fastest) or
    `"checkpointed"` (reverse mode, for BPTT through the relaxation).
    """
    from .relaxation import AbstractSteppingRelaxation, FixedStep

    if forcing is not None:
        net = _Nudged(net, forcing)
    relaxation = opts.relaxation
    if relaxation is None:
        relaxation = _default_relaxation() if kind == "lax" else FixedStep()
    elif kind != "lax" and not isinstance(relaxation, AbstractSteppingRelaxation):
        raise ValueError(
            f"relaxation={relaxation!r} cannot be differentiated through: BPTT "
            "differentiates the fixed-step loop itself. Use relaxation=nd.relaxation."
            "FixedStep() (the default) with nd.BPTT(), or nd.RBP()/nd.EP(), which only need "
            "the steady state, with any relaxation."
        )
    sol = relaxation.relax(_TERM, (net, x), r0, opts, kind=kind, checkpoints=checkpoints)
    info = relax_info(sol.value, sol.steps, sol.residual, opts, sol.result == RESULTS.stagnated)
    if sol.dt is not None:
        # A strategy that changes its step (`Backoff`): the step it ended with, which the
        # adjoint dynamics and EP's nudged phases start from.
        info["dt"] = sol.dt
    return sol.value, info


def continue_step(opts: IntegrationOptions, info: Info) -> IntegrationOptions:
    """`opts` for a relaxation that goes on from one that reported the step it ended with
    (`info["dt"]`, an `nd.relaxation.Backoff`): it starts at that step rather than
    backing off from `dt0` again (EP's nudged phases, from the free equilibrium)."""
    from .relaxation import Backoff

    relaxation = opts.relaxation
    if "dt" not in info or not isinstance(relaxation, Backoff):
        return opts
    return dataclasses.replace(opts, relaxation=dataclasses.replace(relaxation, initial=info["dt"]))


def adjoint_for(adjoint: AbstractAdjointSolve, opts: IntegrationOptions) -> AbstractAdjointSolve:
    """The adjoint solve after a relaxation with `opts`: `AdjointODE` follows a `Backoff`
    relaxation's step control (from the forward's final step, `info["dt"]`), unless the user
    gave it one of its own."""
    from .relaxation import Backoff

    if isinstance(opts.relaxation, Backoff) and isinstance(adjoint, AdjointODE) and adjoint.backoff is None:
        # Its rule only (a static field): the adjoint starts at the forward's final step,
        # whatever step the forward started at (`initial` may be traced, as in `fit`'s
        # warm start).
        return dataclasses.replace(adjoint, backoff=dataclasses.replace(opts.relaxation, initial=None))
    return adjoint


def relax_info(
    r: State,
    steps: Int[Array, ""],
    res: Real[Array, ""],
    opts: IntegrationOptions,
    stagnated: bool | Bool[Array, ""] = False,
) -> Info:
    """The `info` of a relaxation that stopped at `r` after `steps` solver steps, its last
    stopping quantity `res` (for the stepping strategies the last step difference over
    `dt0`, `~ rms(F)`) judged against the tolerance.

    `res` is the reported `residual`, so `converged` is exactly `residual <= atol + rtol
    rms(r)`. No evaluation of `F` at `r` is added: that one evaluation cost a tenth of a
    whole relaxation (Hopfield n = 256, B = 32, six steps), in every call, for `info` alone."""
    from ._iterate import classify

    r_norm = rms_norm(r)
    tol = opts.atol + opts.rtol * r_norm
    # The loop stops early on a non-finite step difference: that is divergence even when
    # the state itself has not yet overflowed. `rms_norm` is finite only when every entry is
    # and their squares do not overflow (one reduction, shared with the tolerance).
    finite = jnp.isfinite(r_norm) & jnp.isfinite(res)
    converged = finite & (res <= tol)
    result = classify(converged, finite, stagnated)
    return dict(result=result, converged=converged, steps=steps, residual=res)


class _Nudged(AbstractNetwork):
    # Wraps a network with an extra drift (EP's `beta dl/dr`); never exported.
    net: AbstractNetwork
    forcing: Callable[[State], State]

    def __init__(self, net: AbstractNetwork, forcing: Callable[[State], State]):
        self.net = net
        self.forcing = forcing

    @property
    def n_state(self) -> int:
        return self.net.n_state

    @property
    def n_in(self) -> int:
        return self.net.n_in

    @property
    def n_out(self) -> int:
        return self.net.n_out

    def __call__(self, t: Time, r: State, x: Input) -> State:
        return self.net(t, r, x) + self.forcing(r)

    def init_state(self, x: Input) -> State:
        return self.net.init_state(x)

    def readout(self, r: State) -> Readout:
        return self.net.readout(r)


# ----------------------------------------------------------------------------------------
# Trajectories
# ----------------------------------------------------------------------------------------


class TimeGrid(eqx.Module):
    """The fixed-step grid of a rollout: interval k is `(ts[k-1], ts[k]]` (with
    `ts[-1] = 0`), integrated in `n_sub` equal steps of `dts[k] <= dt0` with `x[k]` held."""

    t0s: Float[Array, " T"]
    dts: Float[Array, " T"]
    n_sub: int = eqx.field(static=True)


def concrete_times(ts: Times, what: str = "ts") -> tuple[float, ...]:
    """`ts` as a tuple of Python floats, checked: positive and strictly increasing."""
    if isinstance(ts, jax.core.Tracer):
        raise ValueError(
            f"`{what}` must be concrete (a NumPy array, list or non-traced JAX array): the "
            "number of fixed solver steps is decided at trace time. Build the Trajectory "
            "objective outside `jax.jit`, or close over `ts` instead of passing it traced."
        )
    arr = np.asarray(ts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`{what}` must be a non-empty 1-D array of times, got shape {arr.shape}.")
    gaps = np.diff(np.concatenate([[0.0], arr]))
    if not np.all(gaps > 0):
        raise ValueError(
            f"`{what}` must be strictly increasing and start after t = 0 (integration starts "
            f"at 0 and x[k] is held on (ts[k-1], ts[k]]), got {arr.tolist()[:8]}..."
        )
    return tuple(float(t) for t in arr)


def time_grid(ts: tuple[float, ...], dt0: float, max_steps: int, dtype) -> TimeGrid:
    arr = np.asarray(ts)
    starts = np.concatenate([[0.0], arr[:-1]])
    gaps = arr - starts
    n_sub = max(1, math.ceil(float(np.max(gaps)) / dt0 - 1e-9))
    if n_sub * len(ts) > max_steps:
        raise ValueError(
            f"The rollout needs {n_sub * len(ts)} steps ({len(ts)} intervals x {n_sub} steps of "
            f"at most dt0={dt0}), more than max_steps={max_steps}. Raise `max_steps` or `dt0`."
        )
    return TimeGrid(jnp.asarray(starts, dtype=dtype), jnp.asarray(gaps / n_sub, dtype=dtype), n_sub)


def integrate_interval(solver, net, r, x, t0, dt, n_sub: int):
    """Integrates one interval of `n_sub` fixed steps of size `dt` with the input held at `x`."""
    state = solver_init(solver, net, r, x, t0, dt)

    def step(carry, j):
        r, s = carry
        r1, s1 = solver_step(solver, net, r, x, t0 + j * dt, dt, s, False)
        return (r1, s1), None

    if n_sub == 1:
        (r, _), _ = step((r, state), jnp.zeros((), r.dtype))
        return r
    (r, _), _ = jax.lax.scan(step, (r, state), jnp.arange(n_sub, dtype=r.dtype))
    return r


def rollout_loop(
    net: AbstractNetwork,
    xs: Float[Array, "T n_in"],
    grid: TimeGrid,
    r0: Float[Array, " n"],
    solver: diffrax.AbstractSolver,
    *,
    checkpoints: int | None = None,
):
    """The states at the end of each interval, `(T, n)`, and an `info` dict.

    `checkpoints=None` stores every interval's state for reverse mode (fastest);
    an integer uses that many checkpoints and recomputes the rest (less memory)."""

    def body(r, inp):
        x, t0, dt = inp
        r1 = integrate_interval(solver, net, r, x, t0, dt, grid.n_sub)
        return r1, r1

    inputs = (xs, grid.t0s, grid.dts)
    if checkpoints is None:
        _, rs = jax.lax.scan(body, r0, inputs)
    else:
        _, rs = eqxi.scan(body, r0, inputs, kind="checkpointed", checkpoints=checkpoints)
    finite = all_finite(rs)
    info = dict(
        result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite),
        converged=finite,
        steps=jnp.asarray(grid.n_sub * xs.shape[0]),
    )
    return rs, info


# ----------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------


def check_input(net: AbstractNetwork, x: ArrayLike, *, sequence: bool, what: str = "x") -> Array:
    """Casts `x` to the network's dtype and checks its shape; raises a clear ValueError."""
    if not isinstance(net, AbstractNetwork):
        raise ValueError(f"expected a neurodyn network (an `nd.networks.AbstractNetwork`), got {type(net).__name__}.")
    # The network rule (docs/bring_your_own.md): sizes are static Python ints, else JAX traces
    # them inside the estimators, where a traced size cannot shape an array.
    for name in ("n_state", "n_in", "n_out"):
        f, v = type(net).__dataclass_fields__.get(name), getattr(net, name)
        if (
            (f is not None and not f.metadata.get("static"))
            or isinstance(v, bool)
            or not isinstance(v, int | np.integer)
        ):
            raise ValueError(
                f"{type(net).__name__}.{name} = {v!r}: a network's sizes must be Python ints in static fields, "
                f"declared `{name}: int = eqx.field(static=True)` (JAX traces non-static fields inside the "
                "estimators, where a traced size cannot give an array shape); see docs/bring_your_own.md."
            )
    if not isinstance(x, jax.Array):  # a jax.Array (or tracer) needs no conversion
        x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        raise ValueError(
            f"{what} is complex ({x.dtype}); the networks are real and casting would silently "
            "drop the imaginary part. Pass a real array (e.g. the real and imaginary parts "
            "as separate inputs)."
        )
    want = "(T, n_in)" if sequence else "(n_in,)"
    ok = x.ndim == (2 if sequence else 1) and x.shape[-1] == net.n_in
    if not ok:
        hint = ""
        if x.ndim == (3 if sequence else 2):
            hint = " It looks batched: neurodyn functions act on one example; use jax.vmap over the batch."
        raise ValueError(
            f"{what} has shape {x.shape} but {type(net).__name__} with n_in={net.n_in} expects "
            f"{want}={'(T, ' if sequence else '('}{net.n_in}{')' if sequence else ',)'}.{hint}"
        )
    dtype = tree_dtype(net)
    if x.dtype != dtype:
        x = x.astype(dtype)
    # The shape of one step's input, not a slice of it: slicing here ran on the device in
    # every top-level call.
    shape = _init_state_shape(net, jax.ShapeDtypeStruct(x.shape[1:], x.dtype) if sequence else x)
    if shape != (net.n_state,):
        raise ValueError(
            f"{type(net).__name__}.init_state(x) returns shape {shape}, "
            f"but the state is a vector of n_state = {net.n_state}: init_state must return shape ({net.n_state},)."
        )
    return x


# `init_state`'s output shape per (network structure, leaf shapes, input shape): tracing it
# with `jax.eval_shape` on every call cost 0.33 ms, a third of a whole batch gradient on the
# benchmark problem, in every unjitted `nd.relax` / `nd.batch_value_and_grad` call.
_INIT_SHAPES = BoundedCache(4096)


def aval_key(a: Any) -> Any:
    """A hashable stand-in for a pytree leaf: shape and dtype for an array, else the leaf."""
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return ("array", tuple(a.shape), np.dtype(a.dtype))
    return a


def structure_key(tree: Any) -> Any:
    """A hashable key of a pytree's structure (static fields included) and its leaves'
    shapes and dtypes: what a traced function's output shapes depend on. Raises TypeError
    when a leaf is not hashable."""
    leaves, treedef = jax.tree.flatten(tree)
    key = (treedef, tuple(aval_key(a) for a in leaves))
    hash(key)
    return key


def _init_state_shape(net: AbstractNetwork, x: Array | jax.ShapeDtypeStruct) -> Any:
    def shape():
        r0 = jax.eval_shape(net.init_state, x)  # shapes only, nothing computed
        return getattr(r0, "shape", type(r0).__name__)

    return _INIT_SHAPES.get(cache_key(lambda: (structure_key(net), aval_key(x))), shape)


def _initial_state(net, x, r0):
    """`r0` checked and cast; `None` stays `None`, for the jitted function to call
    `net.init_state` inside (eagerly it ran on the device in every top-level call)."""
    if r0 is None:
        return None
    r0 = jnp.asarray(r0, dtype=tree_dtype(net))
    if r0.shape != (net.n_state,):
        raise ValueError(f"r0 has shape {r0.shape} but the network's state has shape ({net.n_state},).")
    return r0


@eqx.filter_custom_vjp
def _implicit_relax(diff, static, r0, opts, adjoint):
    # `diff` holds the network's parameters and the input: the steady state is a function
    # of both through F(r*, w, x) = 0, and jax.grad through nd.relax differentiates it by
    # the implicit function theorem (RBP's adjoint solve), never through the loop.
    net, x = eqx.combine(diff, static)
    return relax_loop(net, x, r0, opts)


@_implicit_relax.def_fwd
def _implicit_relax_fwd(perturbed, diff, static, r0, opts, adjoint):
    del perturbed
    out = _implicit_relax(diff, static, r0, opts, adjoint)
    # The adjoint dynamics run with the step the relaxation ended with (`Backoff` shrinks
    # it where `dt0` overshoots; the adjoint overshoots at the same eigenvalues).
    return out, (out[0], out[1].get("dt", opts.dt0))


@_implicit_relax.def_bwd
def _implicit_relax_bwd(residuals, g_out, perturbed, diff, static, r0, opts, adjoint):
    del perturbed, r0
    r, dt = residuals
    g_r = g_out[0]
    if g_r is None:
        return jtu.tree_map(jnp.zeros_like, diff)

    def F(diff, r):
        net, x = eqx.combine(diff, static)
        return net(0.0, r, x)

    _, vjp_r = jax.vjp(lambda r: F(diff, r), r)
    net = eqx.combine(diff, static)[0]
    # dr*/dw = -J^-1 dF/dw, so the cotangent of (w, x) is v dF/d(w, x) with v J = -g_r.
    symmetric = isinstance(net, AbstractEnergyNetwork)
    solve = adjoint_for(adjoint, opts).solve
    v = solve(lambda u: vjp_r(u)[0], g_r, lambda: jax.jacfwd(lambda r: F(diff, r))(r), symmetric, dt).value
    _, vjp_w = jax.vjp(lambda d: F(d, r), diff)
    return vjp_w(v)[0]


@entry_jit
def _relax_jit(net, x, r0, opts, adjoint):
    if r0 is None:
        r0 = net.init_state(x)
    diff, static = eqx.partition((net, x), eqx.is_inexact_array)
    return _implicit_relax(diff, static, r0, opts, adjoint)


_DEFAULT_ADJOINT = AdjointODE()  # built once: a Module's construction costs tens of microseconds


def relax(
    net: AbstractNetwork,
    x: Real[ArrayLike, " n_in"],
    *,
    r0: Real[ArrayLike, " n"] | None = None,
    adjoint: AbstractAdjointSolve | None = None,
    **options: Any,
) -> tuple[Float[Array, " n"], Info]:
    """Runs the network to its steady state `F(r*, w, x) = 0` for one input `x`.

    **Arguments:**

    - `net`: a network.
    - `x`: one input, shape `(n_in,)`. Batch with `jax.vmap`.
    - `r0`: the initial state (default `net.init_state(x)`); pass a previous `r*` to warm start.
    - `solver`, `dt0`, `rtol`, `atol`, `max_steps`: integration options. It stops when
      `rms(F(r)) < atol + rtol rms(r)`.
    - `relaxation`: how the solver's steps are combined, an `nd.relaxation` strategy
      (`FixedStep(check_every=2)` by default, `Backoff()` where `dt0` may overshoot,
      `Anderson()`, `NewtonKrylov()`).
    - `adjoint`: how `jax.grad` through `r_star` is computed: by the implicit function
      theorem, `dr*/dw = -J^-1 dF/dw`, with this `nd.adjoint` solve (default
      `nd.adjoint.AdjointODE()`, as `nd.RBP()`), never by differentiating the loop. The
      gradient is exact when the relaxation and the adjoint solve converge; for a loss of
      `r_star`, `nd.value_and_grad` with `nd.RBP()` also reports the adjoint's convergence.

    **Returns:**

    `(r_star, info)` where `info` has `converged` (bool), `steps`, `residual` and `result`
    (an `nd.RESULTS`), and `dt`, the final step, for `Backoff`. Non-convergence is reported
    there, not raised. `residual` is the
    quantity the tolerance judged, so `converged` is `residual <= atol + rtol rms(r*)`:
    `rms(F)` measured as the last step difference over `dt0` (with Euler, `rms(F)` one step
    before `r_star`, which a contracting iteration has since reduced), or `rms(F(r*))`
    itself for `NewtonKrylov`.
    """
    check_option_names(options)
    x = check_input(net, x, sequence=False)
    opts = steady_state_options(tree_dtype(net), **options)
    if adjoint is None:
        adjoint = _DEFAULT_ADJOINT
    elif not isinstance(adjoint, AbstractAdjointSolve):
        raise ValueError(f"`adjoint` must be an nd.adjoint strategy such as nd.adjoint.AdjointODE(), got {adjoint!r}.")
    return _relax_jit(net, x, _initial_state(net, x, r0), opts, adjoint)


@entry_jit
def _rollout_jit(net, xs, r0, grid, solver, output):
    if r0 is None:
        r0 = net.init_state(xs[0])
    rs, info = rollout_loop(net, xs, grid, r0, solver)
    if output == "readout":
        rs = jax.vmap(net.readout)(rs)
    return rs, info


def rollout(
    net: AbstractNetwork,
    xs: Real[ArrayLike, "T n_in"],
    ts: Times,
    *,
    r0: Real[ArrayLike, " n"] | None = None,
    output: Literal["readout", "state"] = "readout",
    **options: Any,
) -> tuple[Float[Array, "T m"], Info]:
    """Integrates a trajectory from `t = 0` with the input `xs[k]` held on `(ts[k-1], ts[k]]`.

    **Arguments:**

    - `net`: a network.
    - `xs`: inputs, shape `(T, n_in)`.
    - `ts`: the `T` save times, positive and increasing (concrete, not traced).
    - `r0`: initial state (default `net.init_state(xs[0])`).
    - `output`: `"readout"` (default) or `"state"`.
    - `solver`, `dt0`, `max_steps`: each interval takes `ceil(max_gap / dt0)` equal fixed
      steps. With `solver=diffrax.Euler(), dt0=1.0` and `ts = 1..T` this is exactly the
      discrete-time network `r(t) = f(W r(t-1) + U x(t) + b)`.

    **Returns:**

    `(ys, info)`: `ys` is `(T, n_out)` readouts (or `(T, n)` states) at `ts`.
    """
    check_option_names(options)
    if output not in ("readout", "state"):
        raise ValueError(f"output must be 'readout' or 'state', got {output!r}.")
    xs = check_input(net, xs, sequence=True, what="xs")
    times = concrete_times(ts)
    if len(times) != xs.shape[0]:
        raise ValueError(f"xs has {xs.shape[0]} rows but ts has {len(times)} times; they must match.")
    dtype = tree_dtype(net)
    opts = trajectory_options(dtype, **options)
    grid = time_grid(times, opts.dt0, opts.max_steps, dtype)
    return _rollout_jit(net, xs, _initial_state(net, xs[0], r0), grid, opts.solver, output)


def tree_where(pred, a, b):
    return jtu.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)
