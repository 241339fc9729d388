import abc
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, Bool, DTypeLike, Inexact, PyTree

from .._custom_types import Input, State, Time


# The network partitioned by `eqx.is_inexact_array`: its parameters `w` and the rest.
Params = PyTree[Inexact[Array, "..."]]
Static = PyTree[Any]
# The sensitivities `p = dr/dw` in a strategy's layout, and what it read from the network.
Sensitivities = PyTree[Inexact[Array, "..."]]
Aux = PyTree[Any]
# The joint state `(r, p)` that the solver steps.
JointState = tuple[State, Sensitivities]
# `init(state, x, t0, dt) -> solver_state` and `step(state, x, t0, dt, solver_state=None)
# -> (state, solver_state)` on the joint system.
JointInit = Callable[[JointState, Input, Time, Time], PyTree[Any]]
JointStep = Callable[..., tuple[JointState, PyTree[Any]]]


class AbstractSensitivity(eqx.Module):
    r"""How RTRL represents and propagates the sensitivities `p = dr/dw` along
    `dp/dt = J(r) p + dF/dw`.

    A strategy owns the layout of `p` (the dense `(n, *w.shape)` leaves of exact RTRL, one
    entry per parameter for `SparseSnAp1`, the rank-one factors of `UORO`) and how it is
    stepped with the state. The estimator (`nd.RTRL`) and online learning (`nd.online`)
    call, in order:

    - `prepare` once per run: whatever the strategy reads from the network's structure
      (a mask, the unit each parameter feeds), `aux`;
    - `zeros` for `p = 0` at the start, `restart` at an episode boundary;
    - `stepper` for the joint `(r, p)` solver step;
    - `contract` for the gradient through the state, `g_r^T p`.
    """

    @abc.abstractmethod
    def prepare(self, params: Params, static: Static, n: int, n_in: int, dtype: DTypeLike) -> Aux:
        """What the strategy reads from the network once per run (`aux`, a pytree or None).

        **Arguments:**

        - `params`, `static`: the network partitioned by `eqx.is_inexact_array`.
        - `n`, `n_in`, `dtype`: the state size, the input size and the floating dtype.
        """

    @abc.abstractmethod
    def zeros(self, params: Params, n: int, aux: Aux) -> Sensitivities:
        """The sensitivities `p = 0` in this strategy's layout."""

    @abc.abstractmethod
    def restart(self, p: Sensitivities, aux: Aux) -> Sensitivities:
        """`p = 0` at an episode boundary of a stream (`nd.online`): like `zeros`, but a
        strategy that draws random numbers keeps its stream running."""

    @abc.abstractmethod
    def stepper(
        self, solver: diffrax.AbstractSolver, params: Params, static: Static, aux: Aux
    ) -> tuple[JointInit, JointStep]:
        """`(init, step)` for `solver` on the joint system `(r, p)`:
        `init(state, x, t0, dt) -> solver_state` and
        `step(state, x, t0, dt, solver_state=None) -> (state, solver_state)`, where
        `solver_state=None` starts the solver afresh (at the start of an interval, where
        the input jumps), as `nd.rollout` does."""

    @abc.abstractmethod
    def contract(self, p: Sensitivities, g_r: State, aux: Aux) -> Params:
        """`g_r^T p`, the gradient through the state, shaped like the parameters."""


class AbstractFieldSensitivity(AbstractSensitivity):
    """A strategy whose `p` follows a vector field integrated jointly with `r` by the
    diffrax solver: the solver steps `(r, p)` with `(F(r), dp/dt)`, so for explicit
    Runge-Kutta solvers `p` is the derivative of the discretised trajectory (exactly, for
    `Exact`)."""

    @abc.abstractmethod
    def derivative(
        self,
        F_r: Callable[[State], State],
        F_w: Callable[[Params], State],
        params: Params,
        r: State,
        p: Sensitivities,
        aux: Aux,
    ) -> tuple[State, Sensitivities]:
        """`(F(r), dp/dt)`, with `F_r: r -> F(r, w)` and `F_w: w -> F(r, w)`."""

    def stepper(
        self, solver: diffrax.AbstractSolver, params: Params, static: Static, aux: Aux
    ) -> tuple[JointInit, JointStep]:
        def init(state, x, t0, dt):
            return solver.init(_JOINT, t0, t0 + dt, state, (params, static, x, self, aux))

        def step(state, x, t0, dt, solver_state=None):
            args = (params, static, x, self, aux)
            if solver_state is None:
                solver_state = init(state, x, t0, dt)
            out, _, _, solver_state, _ = solver.step(_JOINT, t0, t0 + dt, state, args, solver_state, False)
            return out, solver_state

        return init, step


def _joint_field(t, state, args):
    # dr/dt = F(r), dp/dt from the strategy, for a diffrax solver.
    params, static, x, sensitivity, aux = args
    r, p = state

    def F_r(r):
        return eqx.combine(params, static)(t, r, x)

    def F_w(params):
        return eqx.combine(params, static)(t, r, x)

    return sensitivity.derivative(F_r, F_w, params, r, p, aux)


_JOINT = diffrax.ODETerm(_joint_field)


class AbstractDenseSensitivity(AbstractFieldSensitivity):
    r"""`p` stored densely: each leaf `(n, *w_leaf.shape)` (a leading state axis),
    `p[i, ...] = dr_i / dw_leaf[...]`. A strategy decides which entries of `p` are kept
    (`mask`) and how `J p` is formed (`propagate`); the immediate term `dF/dw` is a VJP of
    `F` batched over the `n` units.

    Memory O(nm) for `p` and `dF/dw`, whatever the strategy.
    """

    @abc.abstractmethod
    def mask(self, immediate: Callable[[int], PyTree[Array]]) -> PyTree[Bool[Array, "..."]] | None:
        """The kept entries of `p` as a boolean pytree shaped like `p`, or None for all.

        **Arguments:**

        - `immediate`: `i -> dF/dw` at the `i`-th random state and input (a pytree shaped
          like `p`), from which a strategy reads the sparsity of the immediate Jacobian.
        """

    @abc.abstractmethod
    def propagate(self, jvp: Callable[[State], State], r: State, p: Sensitivities) -> Sensitivities:
        """`J p`, possibly approximated, with `jvp: v -> J(r) v` the linearised vector field."""

    def prepare(self, params, static, n, n_in, dtype):
        # dF/dw at random states and inputs (random so that no zero input or state hides a
        # connection).
        def immediate(i):
            kr, kx = jr.split(jr.fold_in(jr.PRNGKey(0), i))
            r, x = jr.normal(kr, (n,), dtype), jr.normal(kx, (n_in,), dtype)
            return jax.jacrev(lambda p: eqx.combine(p, static)(0.0, r, x))(params)

        return self.mask(immediate)

    def zeros(self, params, n, aux):
        del aux
        return jtu.tree_map(lambda w: jnp.zeros((n,) + w.shape, w.dtype), params)

    def restart(self, p, aux):
        del aux
        return jtu.tree_map(jnp.zeros_like, p)

    def derivative(self, F_r, F_w, params, r, p, aux):
        # One linearisation gives F(r) and the JVP that the strategy vmaps over p's columns.
        dr, jvp = jax.linearize(F_r, r)
        # dF/dw, leaves (n, *w.shape): a VJP batched over the n units, O(n cost(F)) time.
        immediate = jax.jacrev(F_w)(params)
        dp = jtu.tree_map(jnp.add, self.propagate(jvp, r, p), immediate)
        if aux is not None:
            dp = jtu.tree_map(lambda d, k: jnp.where(k, d, jnp.zeros((), d.dtype)), dp, aux)
        return dr, dp

    def contract(self, p, g_r, aux):
        del aux
        return jtu.tree_map(lambda a: jnp.tensordot(g_r.astype(a.dtype), a, axes=1), p)


class AbstractStochasticSensitivity(AbstractSensitivity):
    """A strategy that draws random numbers at every step (UORO): its `p` is an unbiased
    random estimate that never settles, so it serves trajectory objectives and online
    learning, not a steady state."""


def jvp_columns(jvp: Callable[[Array], Array], p: PyTree[Array]) -> PyTree[Array]:
    """`J p` exactly: the JVP `v -> J v` vmapped over the parameter axes of every leaf.

    XLA turns the vmapped linear map into one `(n, n) x (n, m_leaf)` product per leaf for
    dense networks (O(n^2 m) flops in all), and keeps sparse structure where F has it."""

    def leaf(a):
        n = a.shape[0]
        cols = a.reshape(n, -1)
        return jax.vmap(jvp, in_axes=1, out_axes=1)(cols).reshape(a.shape)

    return jtu.tree_map(leaf, p)


def jacobian_diagonal(jvp: Callable[[Array], Array], r: Array) -> Array:
    """`diag(J)` from `n` JVPs with the unit vectors: O(n cost(F)) time, O(n^2) memory.

    (A matrix-free network cannot give its diagonal more cheaply in general.)"""
    n = r.shape[0]
    columns = jax.vmap(jvp)(jnp.eye(n, dtype=r.dtype))  # row i = J e_i
    return jnp.diagonal(columns)


def scale_rows(d: Array, p: PyTree[Array]) -> PyTree[Array]:
    """`diag(d) p`: every leaf's state axis scaled by `d`."""

    def leaf(a):
        return a * d.reshape((d.shape[0],) + (1,) * (a.ndim - 1))

    return jtu.tree_map(leaf, p)
