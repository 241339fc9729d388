import abc

import equinox as eqx
import jax

from .._objectives import AbstractObjective


class AbstractEstimator(eqx.Module):
    """A gradient estimator: computes `(loss, dl/dw, info)` for one example.

    Subclasses list the objectives they can serve in `objectives` and implement
    `value_grad_and_residuals` and `grads_from_residuals` (`value_and_grad` is built on
    them). Call them through `nd.value_and_grad`, which checks the input.
    """

    objectives: eqx.AbstractClassVar[tuple[type[AbstractObjective], ...]]

    def value_and_grad(self, net, x, y, objective, options):
        """`(loss, grads, info)` for one checked example; `options` are resolved
        `IntegrationOptions`. `grads` has the structure of
        `eqx.filter(net, eqx.is_inexact_array)`."""
        loss, grads, info, _ = self.value_grad_and_residuals(net, x, y, objective, options)
        return loss, grads, info

    @abc.abstractmethod
    def value_grad_and_residuals(self, net, x, y, objective, options):
        """`(loss, grads, info, residuals)`: `value_and_grad` plus what
        `grads_from_residuals` needs to form `scale * grads` again.

        `jax.grad` through the custom VJP of `nd.value_and_grad` calls this in the forward
        pass and `grads_from_residuals` in the backward pass. Estimators whose gradient is
        one VJP at saved states (RBP, EP) keep the states: under `vmap` the batch sum that
        JAX inserts for the shared parameters then fuses with that VJP's products, instead
        of reducing B materialised per-example gradients (on XLA's CPU backend a reduction
        over the leading axis of a (B, n, n) array, 7x slower than the whole RBP gradient).
        The others (BPTT, RTRL) keep the gradient itself
        (`AbstractGradientResidualEstimator`)."""

    @abc.abstractmethod
    def grads_from_residuals(self, net, x, y, objective, options, residuals, scale):
        """`scale * grads` from `value_grad_and_residuals`'s residuals (linear in `scale`,
        the cotangent of the loss)."""

    def check_objective(self, objective: AbstractObjective) -> None:
        """Raises a ValueError at trace time if this estimator cannot serve `objective`."""
        if not isinstance(objective, AbstractObjective):
            raise ValueError(
                f"objective must be nd.SteadyState(...) or nd.Trajectory(...), got {objective!r}."
            )
        if not isinstance(objective, self.objectives):
            served = " and ".join(f"nd.{o.__name__}" for o in self.objectives)
            raise ValueError(
                f"{type(self).__name__} cannot serve a {type(objective).__name__} objective: it "
                f"needs a steady state, and serves only {served}. Use nd.BPTT() or nd.RTRL() "
                "for trajectory objectives."
            )



class AbstractGradientResidualEstimator(AbstractEstimator):
    """An estimator whose custom-VJP residual is its gradient itself (BPTT, RTRL): the
    backward pass scales the saved per-example gradient by the loss cotangent.

    Subclasses implement `_loss_grads_info(net, x, y, objective, options)`, returning
    `(loss, grads, info)`."""

    @abc.abstractmethod
    def _loss_grads_info(self, net, x, y, objective, options):
        """`(loss, grads, info)` for one checked example."""

    def value_grad_and_residuals(self, net, x, y, objective, options):
        loss, grads, info = self._loss_grads_info(net, x, y, objective, options)
        return loss, grads, info, grads

    def grads_from_residuals(self, net, x, y, objective, options, residuals, scale):
        del net, x, y, objective, options
        return jax.tree.map(lambda g: scale * g, residuals)
