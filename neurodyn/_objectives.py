"""What is differentiated: a loss at the steady state, or along a trajectory."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, DTypeLike, Float, Inexact, Shaped

from . import losses as _losses
from ._custom_types import Scalar, State, StateOrStates, States, Target, Times
from ._dynamics import check_input, concrete_times
from ._misc import tree_dtype
from ._options import IntegrationOptions, steady_state_options, trajectory_options
from .networks import AbstractNetwork


class StepWeightedTargets(eqx.Module):
    """One example's trajectory targets with its own per-time weights `(T,)`: how
    `nd.batch_value_and_grad(..., weights=w)` with `w` of shape `(B, T)` hands each example's
    step weights to the estimators (a pytree, vmapped with the targets). `nd.Trajectory`
    multiplies them into its `alpha_k`."""

    targets: Any
    weights: Float[Array, " T"]


class AbstractObjective(eqx.Module):
    """A scalar objective of a network's dynamics for one example `(x, y)`."""

    loss: eqx.AbstractVar[Callable]

    @abc.abstractmethod
    def check_data(
        self, net: AbstractNetwork, x: ArrayLike, y: Target
    ) -> tuple[Float[Array, "*T n_in"], Shaped[Array, "..."]]:
        """Checks and casts one example; raises ValueError naming the shapes. The input is
        `(n_in,)` for a steady state and `(T, n_in)` along a trajectory."""

    @abc.abstractmethod
    def options(self, dtype: DTypeLike, **given: Any) -> IntegrationOptions:
        """The integration options, with this objective's defaults for the unset ones."""

    @abc.abstractmethod
    def value(self, net: AbstractNetwork, r: StateOrStates, y: Target) -> Scalar:
        """The scalar loss at the state(s) `r` the estimators solved for (the steady state
        `(n,)`, or the states at the save times `(T, n)`), every estimator's one call into
        the objective."""


def _check_target(net: AbstractNetwork, y: Target, loss: Callable, lead: tuple[int, ...], what: str) -> Array:
    if not isinstance(y, jax.Array):  # arrays and tracers as they are
        y = jnp.asarray(y)
    if jnp.iscomplexobj(y):
        raise ValueError(
            f"{what} is complex ({y.dtype}); neurodyn's losses take real targets and casting "
            "would silently drop the imaginary part. Pass a real array (e.g. split the real "
            "and imaginary parts into separate readout units)."
        )
    if jnp.issubdtype(y.dtype, jnp.integer) and _losses.takes_class_index(loss):
        if y.shape != lead:
            raise ValueError(f"{what} holds class indices with shape {y.shape}; expected {lead}.")
        if not isinstance(y, jax.core.Tracer):
            # Concrete targets are checked here; traced ones give a NaN loss, flagged in info.
            bad = np.asarray(y)[(np.asarray(y) < 0) | (np.asarray(y) >= net.n_out)]
            if bad.size:
                raise ValueError(
                    f"{what} holds class index {int(bad.flat[0])}, outside [0, {net.n_out}): the "
                    f"readout of {type(net).__name__} has n_out={net.n_out} classes (negative "
                    "indices do not wrap around)."
                )
        return y
    if jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"{what} is an integer array but the loss {getattr(loss, '__name__', loss)} needs "
            "float targets; one-hot encode it (jax.nn.one_hot) or use "
            "nd.losses.softmax_cross_entropy for class indices."
        )
    want = lead + (net.n_out,)
    if y.shape != want:
        raise ValueError(
            f"{what} has shape {y.shape} but the readout of {type(net).__name__} gives "
            f"{want} (n_out={net.n_out}); the target must match the readout."
        )
    dtype = tree_dtype(net)
    return y if y.dtype == dtype else y.astype(dtype)


class SteadyState(AbstractObjective):
    """`l(readout(r*), y)` at the steady state `F(r*, w, x) = 0`.

    **Arguments:**

    - `loss`: a function `(prediction, target) -> scalar`, e.g. `nd.losses.squared_error`.
    """

    loss: Callable = _losses.squared_error

    def check_data(
        self, net: AbstractNetwork, x: ArrayLike, y: Target
    ) -> tuple[Float[Array, " n_in"], Shaped[Array, "..."]]:
        x = check_input(net, x, sequence=False)
        return x, _check_target(net, y, self.loss, (), "y")

    def options(self, dtype: DTypeLike, **given: Any) -> IntegrationOptions:
        return steady_state_options(dtype, **given)

    def value(self, net: AbstractNetwork, r: State, y: Target) -> Scalar:
        """The loss at state `r`."""
        return self.loss(net.readout(r), y)


class Trajectory(AbstractObjective):
    """`sum_k alpha_k l(readout(r(t_k)), y_k)` along a trajectory from `t = 0`.

    The input `x[k]` is held on `(ts[k-1], ts[k]]`; `y[k]` is compared with `readout(r(ts[k]))`.

    **Arguments:**

    - `loss`: a function `(prediction, target) -> scalar`.
    - `ts`: the `T` times, positive and increasing, concrete (not traced).
    - `weights`: `alpha_k`, shape `(T,)`; default all ones. Zero weights skip a time.
    """

    loss: Callable
    ts: tuple[float, ...] = eqx.field(static=True)
    weights: Float[Array, " T"] | None

    def __init__(
        self, loss: Callable = _losses.squared_error, ts: Times = (1.0,), weights: Float[ArrayLike, " T"] | None = None
    ):
        self.loss = loss
        self.ts = concrete_times(ts)
        if weights is not None:
            weights = jnp.asarray(weights)
            if weights.shape != (len(self.ts),):
                raise ValueError(
                    f"Trajectory weights have shape {weights.shape}; expected ({len(self.ts)},), one per time in ts."
                )
        self.weights = weights

    def check_data(
        self, net: AbstractNetwork, x: ArrayLike, y: Target
    ) -> tuple[Float[Array, "T n_in"], Shaped[Array, "..."]]:
        x = check_input(net, x, sequence=True)
        T = len(self.ts)
        if x.shape[0] != T:
            raise ValueError(f"x has {x.shape[0]} rows but the objective has {T} times in ts.")
        return x, _check_target(net, y, self.loss, (T,), "y")

    def options(self, dtype: DTypeLike, **given: Any) -> IntegrationOptions:
        return trajectory_options(dtype, **given)

    def alphas(self, dtype: DTypeLike) -> Float[Array, " T"]:
        if self.weights is None:
            return jnp.ones((len(self.ts),), dtype=dtype)
        return self.weights.astype(dtype)

    def example_alphas(self, y: "Target | StepWeightedTargets", dtype: DTypeLike) -> tuple[Target, Float[Array, " T"]]:
        """One example's targets and per-time weights: `alpha_k`, times the example's own
        step weights when `y` carries them (`StepWeightedTargets`, as `nd.batch_value_and_grad`
        passes per-example weights `(B, T)`)."""
        if isinstance(y, StepWeightedTargets):
            return y.targets, self.alphas(dtype) * y.weights.astype(dtype)
        return y, self.alphas(dtype)

    def terms(self, net: AbstractNetwork, rs: States, y: "Target | StepWeightedTargets") -> Inexact[Array, " T"]:
        """The weighted per-time losses `alpha_k l_k`."""
        targets, alphas = self.example_alphas(y, rs.real.dtype)
        per_time = jax.vmap(lambda r, yk: self.loss(net.readout(r), yk))(rs, targets)
        return alphas.astype(per_time.dtype) * per_time

    def value(self, net: AbstractNetwork, rs: States, y: Target) -> Scalar:
        """The weighted sum of the per-time losses along the states `rs`."""
        return jnp.sum(self.terms(net, rs, y))
