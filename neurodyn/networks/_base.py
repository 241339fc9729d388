"""The network interface: a continuous-time vector field `dr/dt = F(r, w, x)`."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from .._custom_types import Input, Readout, Scalar, State, Time


class AbstractNetwork(eqx.Module):
    """A network is a vector field. Its parameters `w` are its inexact-array leaves.

    Subclasses set `n_state`, `n_in`, `n_out` and implement `__call__`, `init_state` and
    `readout`. The state `r` is a vector of size `n_state`; the input `x` a vector of size
    `n_in`; `readout(r)` is what the loss sees, a vector of size `n_out`.
    """

    n_state: eqx.AbstractVar[int]
    n_in: eqx.AbstractVar[int]
    n_out: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(self, t: Time, r: State, x: Input) -> State:
        """The vector field `dr/dt = F(r, w, x)` at time `t` (a Python float or a 0-d array);
        `r` and `x` are real, or complex inside holomorphic EP."""

    @abc.abstractmethod
    def init_state(self, x: Input) -> State:
        """The initial state `r0` for input `x`."""

    @abc.abstractmethod
    def readout(self, r: State) -> Readout:
        """What the loss sees of the state `r`."""


class AbstractEnergyNetwork(AbstractNetwork):
    """A network whose vector field is a gradient flow, `F = -dE/dr`.

    Its Jacobian `J = -d^2E/dr^2` is symmetric, which equilibrium propagation needs to be
    exact and which lets RBP solve its adjoint with conjugate gradients.
    """

    @abc.abstractmethod
    def energy(self, r: State, x: Input) -> Scalar:
        """The energy `E(r, x)` with `F(r, x) = -dE/dr`."""


def normal_init(key: PRNGKeyArray, shape: tuple[int, ...], scale: ArrayLike, dtype=None) -> Array:
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jnp.multiply(scale, jax.random.normal(key, shape, dtype))
