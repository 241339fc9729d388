import abc

import equinox as eqx


class AbstractRelaxation(eqx.Module):
    """A strategy for the forward relaxation to a steady state `F(r*, w, x) = 0`.

    Pass one as the `relaxation=` integration option of `nd.relax` and `nd.value_and_grad`
    (steady-state objectives). Every strategy iterates the map of one step of the chosen
    diffrax `solver` with step `dt0`, `Phi(r) = r + dt0 F(r) + O(dt0^2)`, whose fixed
    points are exactly the zeros of `F`; they differ in how they combine those steps.
    """

    @abc.abstractmethod
    def relax(self, term, args, r0, opts, *, kind, checkpoints):
        """Returns `(r, steps, res)`: the final state, the number of step-map evaluations
        and the stopping quantity `res ~ rms(F(r))` (the last step difference over `dt0`),
        such that the caller declares convergence when `res <= atol + rtol rms(r)` (`<=`: with
        `atol = 0` a steady state at `r = 0` must still stop).

        `kind`/`checkpoints` are the equinox while-loop kind (`"lax"`, or
        `"checkpointed"` when the caller differentiates through the loop)."""


def tolerance(opts, r):
    from .._misc import rms_norm

    return opts.atol + opts.rtol * rms_norm(r)
