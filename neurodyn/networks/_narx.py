from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, State, Time
from ._base import AbstractNetwork, normal_init


class NARX(AbstractNetwork):
    r"""The input-output recurrent model (NARX; Narendra & Parthasarathy 1990, Siegelmann et al. 1997) with `q` delays:

    `y_{n+1} = F(y_n, ..., y_{n-q+1}; u_n, ..., u_{n-q+1})`, `F` a one-hidden-layer MLP.

    The delay lines are held in the state `r = (y_n, ..., y_{n-q+1}, u_{n-1}, ..., u_{n-q+1})`
    and the vector field is `dr/dt = -r + S(r, u)` with `S` the shifted, updated delay lines,
    so that Euler with `dt = 1` (and `ts = 1..T`, `x[k] = u_k`) is exactly the recursion, the
    readout at `t_k` being `y_{k+1}`, the prediction made from `u_k` and the past. The state
    has `q n_out + (q - 1) n_in` entries; the input line keeps `q - 1` past inputs because
    the current one is `x` itself. Cost O(n_hidden q (n_in + n_out)) per evaluation. At a
    steady state (constant input) `y* = F(y*, ..., y*; u, ..., u)`.

    **Arguments:**

    - `n_in`, `n_out`: input and output sizes.
    - `q`: the number of delays of the output and of the input (at least 1).
    - `n_hidden`: hidden units of the MLP `F` (`F(z) = W_o f(W_h z + b_h) + b_o`).
    - `activation`: `f`, any `nd.activations` member (default `tanh`).
    - `gain`: `W_o ~ N(0, gain^2 / n_hidden)`: the scale of the output feedback. The default
      0.5 keeps the map from the delayed outputs to the new one contracting.
    - `key`: a `jax.random` key.
    """

    W_h: Float[Array, "h d"]
    b_h: Float[Array, " h"]
    W_o: Float[Array, "n_out h"]
    b_o: Float[Array, " n_out"]
    activation: Callable
    q: int = eqx.field(static=True)
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(
        self,
        n_in: int,
        n_out: int,
        q: int = 2,
        n_hidden: int = 8,
        activation: Callable = _act.tanh,
        *,
        gain: float = 0.5,
        key: PRNGKeyArray,
    ):
        if q < 1:
            raise ValueError(f"NARX needs q >= 1 delays, got q={q}.")
        if min(n_in, n_out, n_hidden) < 1:
            raise ValueError(f"NARX sizes must be positive, got n_in={n_in}, n_out={n_out}, n_hidden={n_hidden}.")
        d = q * (n_out + n_in)
        k1, k2, k3 = jr.split(key, 3)
        self.W_h = normal_init(k1, (n_hidden, d), 1.0 / jnp.sqrt(d))
        self.b_h = jnp.zeros((n_hidden,))
        self.W_o = normal_init(k2, (n_out, n_hidden), gain / jnp.sqrt(n_hidden))
        self.b_o = jnp.zeros((n_out,))
        self.activation = _act.materialise(activation, n_hidden, k3)
        self.q, self.n_in, self.n_out = q, n_in, n_out
        self.n_state = q * n_out + (q - 1) * n_in

    def _split(self, r):
        ys = r[: self.q * self.n_out].reshape(self.q, self.n_out)
        us = r[self.q * self.n_out :].reshape(self.q - 1, self.n_in)
        return ys, us

    def step(self, r, x):
        """The discrete map `r_{n+1} = S(r_n, u_n)` (shift the delay lines, prepend the new y)."""
        ys, us = self._split(r)
        inputs = jnp.concatenate([ys.reshape(-1), x, us.reshape(-1)])
        y_new = self.W_o @ self.activation(self.W_h @ inputs + self.b_h) + self.b_o
        ys_new = jnp.concatenate([y_new[None], ys[:-1]])
        us_new = jnp.concatenate([x[None], us[:-1]]) if self.q > 1 else us
        return jnp.concatenate([ys_new.reshape(-1), us_new.reshape(-1)])

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        return -r + self.step(r, x)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), self.W_h.dtype)

    def readout(self, r: State) -> Readout:
        return r[: self.n_out]
