import abc
from typing import Any, TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree, Real, Shaped

from .._custom_types import Grads, Info, Scalar
from .._objectives import AbstractObjective
from .._options import IntegrationOptions
from ..networks import AbstractNetwork


# equinox's documented idiom: type checkers know `ClassVar`, equinox checks `AbstractClassVar`.
if TYPE_CHECKING:
    from typing import ClassVar as AbstractClassVar
else:
    from equinox import AbstractClassVar

# One checked example's input and target, `(n_in,)`/`(T, n_in)` and a float or class-index target.
CheckedInput = Float[Array, "*T n_in"]
CheckedTarget = Shaped[Array, "..."]
# A batch of them, with a leading batch axis.
BatchInput = Float[Array, "B *T n_in"]
BatchTarget = Shaped[Array, "B ..."]
# What an estimator keeps from its forward pass for the backward one.
Residuals = PyTree[Any]


class AbstractEstimator(eqx.Module):
    """A gradient estimator: computes `(loss, dl/dw, info)` for one example, and the mean
    loss and its gradient for a batch.

    Subclasses list the objectives they can serve in `objectives` and implement
    `value_grad_and_residuals`, `grads_from_residuals` (one example; `value_and_grad` is
    built on them) and `batch_value_and_grad` (a batch, one reverse pass). Call them through
    `nd.value_and_grad` and `nd.batch_value_and_grad`, which check the input.
    """

    objectives: AbstractClassVar[tuple[type[AbstractObjective], ...]]

    def value_and_grad(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info]:
        """`(loss, grads, info)` for one checked example; `options` are resolved
        `IntegrationOptions`. `grads` has the structure of
        `eqx.filter(net, eqx.is_inexact_array)`."""
        loss, grads, info, _ = self.value_grad_and_residuals(net, x, y, objective, options)
        return loss, grads, info

    @abc.abstractmethod
    def value_grad_and_residuals(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info, Residuals]:
        """`(loss, grads, info, residuals)`: `value_and_grad` plus what
        `grads_from_residuals` needs to form `scale * grads` again.

        `jax.grad` through the custom VJP of `nd.value_and_grad` calls this in the forward
        pass and `grads_from_residuals` in the backward pass."""

    @abc.abstractmethod
    def grads_from_residuals(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
        residuals: Residuals,
        scale: Real[ArrayLike, ""],
    ) -> Grads:
        """`scale * grads` from `value_grad_and_residuals`'s residuals (linear in `scale`,
        the cotangent of the loss)."""

    @abc.abstractmethod
    def batch_value_and_grad(
        self,
        net: AbstractNetwork,
        xs: BatchInput,
        ys: BatchTarget,
        weights: Float[Array, " B"],
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info]:
        """`(loss, grads, info)` for a checked batch: `loss = sum_b weights_b l_b` (the
        weights are normalised by the caller to sum to one), `grads` its gradient with the
        structure of `eqx.filter(net, eqx.is_inexact_array)`, `info` per example (leading
        batch axis), including each example's `loss`.

        States are solved per example (vmapped); the parameter gradient of the batch is
        formed in ONE reverse pass with the parameters shared across the batch, so weight
        gradients are matrix products over the batch, never B per-example arrays."""

    def check_objective(self, objective: AbstractObjective) -> None:
        """Raises a ValueError at trace time if this estimator cannot serve `objective`."""
        if not isinstance(objective, AbstractObjective):
            raise ValueError(f"objective must be nd.SteadyState(...) or nd.Trajectory(...), got {objective!r}.")
        if not isinstance(objective, self.objectives):
            served = " and ".join(f"nd.{o.__name__}" for o in self.objectives)
            raise ValueError(
                f"{type(self).__name__} cannot serve a {type(objective).__name__} objective: it "
                f"needs a steady state, and serves only {served}. Use nd.BPTT() or nd.RTRL() "
                "for trajectory objectives."
            )


def check_estimator(estimator: Any, objective: Any) -> None:
    """Raises a ValueError unless `estimator` is an estimator (an instance, not its class)
    that can serve `objective`: the check every entry point runs before tracing."""
    if not isinstance(estimator, AbstractEstimator):
        raise ValueError(f"estimator must be one of nd.BPTT(), nd.RBP(), nd.EP(), nd.RTRL(), got {estimator!r}.")
    # Called through the class: equinox wraps each method access on a Module in a new
    # `BoundMethod` Module, tens of microseconds per top-level call for nothing.
    type(estimator).check_objective(estimator, objective)


def weighted_sum(weights: Float[Array, " B"], values: Float[Array, " B"]) -> Float[Array, ""]:
    """`sum_b weights_b values_b`, with examples of weight zero contributing exactly zero
    (a padded example's NaN loss does not leak into the batch's)."""
    values = jnp.where(weights > 0, values, jnp.zeros((), values.dtype))
    return jnp.sum(weights.astype(values.dtype) * values)


def tree_weighted_sum(weights: Float[Array, " B"], tree: PyTree[Array]) -> PyTree[Array]:
    """`sum_b weights_b leaf_b` for every leaf, as a GEMV over the flattened leaf (XLA's CPU
    backend runs a leading-axis reduction of a `(B, n, n)` array several times slower)."""

    def one(a):
        B = a.shape[0]
        w = jnp.where(weights > 0, weights, 0).astype(a.dtype)
        safe = jnp.where((weights > 0).reshape((B,) + (1,) * (a.ndim - 1)), a, jnp.zeros((), a.dtype))
        return (w @ safe.reshape(B, -1)).reshape(a.shape[1:])

    return jax.tree.map(one, tree)


class AbstractSurrogateEstimator(AbstractEstimator):
    """An estimator whose gradient is the parameter gradient of a surrogate at solved
    states (RBP: `l(readout(r*)) + v* . F(r*, w, x)`; EP: the loss plus the nudged energies'
    finite difference; full BPTT of a trajectory: the loss plus the adjoints dotted with
    every solver step).

    Subclasses implement `solve` (the states, per example, no parameter gradient) and
    `surrogate` (a scalar whose gradient in `w`, the states held fixed, is the estimate).
    The batch gradient is then ONE reverse pass of `sum_b weights_b surrogate_b(w)` with
    the states of all examples: XLA forms each weight gradient as one matrix product over
    the batch (`R^T G`), where the vmap of per-example gradients writes B outer products
    and reduces them.
    """

    @abc.abstractmethod
    def solve(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Residuals, Info]:
        """`(loss, residuals, info)` for one example: the states `surrogate` needs."""

    @abc.abstractmethod
    def surrogate(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        residuals: Residuals,
    ) -> Scalar:
        """A scalar whose gradient in the parameters of `net` (at fixed `residuals`) is the
        estimated gradient of the loss."""

    def grads_from_residuals(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
        residuals: Residuals,
        scale: Real[ArrayLike, ""],
    ) -> Grads:
        del options
        params, static = eqx.partition(net, eqx.is_inexact_array)

        def f(p):
            return self.surrogate(eqx.combine(p, static), x, y, objective, residuals)

        out, vjp = jax.vjp(f, params)
        (grads,) = vjp(jnp.asarray(scale, out.dtype))
        return grads

    def value_grad_and_residuals(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info, Residuals]:
        loss, residuals, info = self.solve(jax.lax.stop_gradient(net), x, y, objective, options)
        residuals = jax.lax.stop_gradient(residuals)
        grads = self.grads_from_residuals(net, x, y, objective, options, residuals, jnp.ones((), loss.dtype))
        return loss, grads, info, residuals

    def batch_value_and_grad(
        self,
        net: AbstractNetwork,
        xs: BatchInput,
        ys: BatchTarget,
        weights: Float[Array, " B"],
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info]:
        frozen = jax.lax.stop_gradient(net)
        losses, residuals, info = jax.vmap(lambda x, y: self.solve(frozen, x, y, objective, options))(xs, ys)
        residuals = jax.lax.stop_gradient(residuals)
        params, static = eqx.partition(net, eqx.is_inexact_array)

        def total(p):
            m = eqx.combine(p, static)
            per = jax.vmap(lambda x, y, res: self.surrogate(m, x, y, objective, res))(xs, ys, residuals)
            return weighted_sum(weights, per)

        grads = jax.grad(total)(params)
        return weighted_sum(weights, losses), grads, dict(info, loss=losses)


class AbstractGradientResidualEstimator(AbstractEstimator):
    """An estimator whose custom-VJP residual is its gradient itself (BPTT, RTRL): the
    backward pass scales the saved per-example gradient by the loss cotangent.

    Subclasses implement `_loss_grads_info(net, x, y, objective, options)`, returning
    `(loss, grads, info)`, and `batch_value_and_grad`."""

    @abc.abstractmethod
    def _loss_grads_info(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info]:
        """`(loss, grads, info)` for one checked example."""

    def value_grad_and_residuals(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Grads, Info, Residuals]:
        loss, grads, info = self._loss_grads_info(net, x, y, objective, options)
        return loss, grads, info, grads

    def grads_from_residuals(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
        residuals: Residuals,
        scale: Real[ArrayLike, ""],
    ) -> Grads:
        del net, x, y, objective, options
        return jax.tree.map(lambda g: scale * g, residuals)
