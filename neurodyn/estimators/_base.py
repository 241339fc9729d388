import abc

import equinox as eqx

from .._objectives import AbstractObjective


class AbstractEstimator(eqx.Module):
    """A gradient estimator: computes `(loss, dl/dw, info)` for one example.

    Subclasses list the objectives they can serve in `objectives` and implement
    `value_and_grad`. Call them through `nd.value_and_grad`, which checks the input.
    """

    objectives: eqx.AbstractClassVar[tuple[type[AbstractObjective], ...]]

    @abc.abstractmethod
    def value_and_grad(self, net, x, y, objective, options):
        """`(loss, grads, info)` for one checked example; `options` are resolved
        `IntegrationOptions`. `grads` has the structure of
        `eqx.filter(net, eqx.is_inexact_array)`."""

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
