from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, State, Time
from ._base import AbstractInputRescalable, AbstractNetwork, normal_init, scaled_to


class Elman(AbstractNetwork, AbstractInputRescalable):
    r"""The state-space model / simple recurrent network of Elman (Elman 1990, "Finding structure in time"):

    `x_{n+1} = a(x_n, u_n) = f(W_a x_n + W_b u_n + b)`, `y_n = B x_n`,

    written as the vector field `dx/dt = -x + a(x, u)`, so that Euler with `dt = 1` (and
    `ts = 1..T`) is exactly the discrete network, and its steady state is the fixed point
    `x* = a(x*, u)`. Cost O(n^2 + n n_in) per evaluation. The readout `B x` has no bias, as
    in Haykin (2009, ch. 15).

    **Arguments:**

    - `n`, `n_in`, `n_out`: state units, inputs, outputs.
    - `activation`: `f`, any `nd.activations` member (default `logistic`, as in the notes).
    - `gain`: `W_a ~ N(0, gain^2 / n)`, spectral radius about `gain`; the default 0.5 with
      `|f'| <= 1` makes `a` a contraction (unique, stable steady state).
    - `key`: a `jax.random` key.
    """

    W_a: Float[Array, "n n"]
    W_b: Float[Array, "n n_in"]
    b: Float[Array, " n"]
    B: Float[Array, "n_out n"]
    activation: Callable
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(
        self,
        n: int,
        n_in: int,
        n_out: int,
        activation: Callable = _act.logistic,
        *,
        gain: float = 0.5,
        key: PRNGKeyArray,
    ):
        if min(n, n_in, n_out) < 1:
            raise ValueError(f"Elman sizes must be positive, got n={n}, n_in={n_in}, n_out={n_out}.")
        k1, k2, k3, k4 = jr.split(key, 4)
        self.W_a = normal_init(k1, (n, n), gain / jnp.sqrt(n))
        self.W_b = normal_init(k2, (n, n_in), 1.0 / jnp.sqrt(n_in))
        self.b = jnp.zeros((n,))
        self.B = normal_init(k3, (n_out, n), 1.0 / jnp.sqrt(n))
        self.activation = _act.materialise(activation, n, k4)
        self.n_state, self.n_in, self.n_out = n, n_in, n_out

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        return -r + self.activation(self.W_a @ r + self.W_b @ x + self.b)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), self.W_a.dtype)

    def rescale_inputs(self, X: Float[ArrayLike, "N n_in"], scale: float) -> "Elman":
        """The input weights `W_b` rescaled: the input drive `W_b x` has standard deviation
        `scale` over `X`; the recurrent weights keep their gain, which sets the stability."""
        return eqx.tree_at(lambda m: m.W_b, self, scaled_to(self.W_b, X, scale))

    def readout(self, r: State) -> Readout:
        return self.B @ r
