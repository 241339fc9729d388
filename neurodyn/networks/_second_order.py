from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, State, Time
from ._base import AbstractNetwork, normal_init


class SecondOrder(AbstractNetwork):
    r"""The second-order network (Giles et al. 1992): multiplicative state-input interactions,

    `v_k = b_k + sum_ij w_kij x_i u_j`, `x_{k,n+1} = logistic(v_k)`,

    as the vector field `dx/dt = -x + f(v(x, u))` (Euler with `dt = 1` is the discrete second-order map;
    the steady state is `x* = f(v(x*, u))`); linear readout `V x + c`. The input gates the
    recurrence: the effective recurrent matrix is `W(u)_ki = sum_j w_kij u_j`. Cost
    O(n^2 n_in) per evaluation, and as many parameters.

    **Arguments:**

    - `n`, `n_in`, `n_out`: state units, inputs, outputs.
    - `activation`: `f`, any `nd.activations` member (default `logistic`, as in the notes).
    - `gain`: `w_kij ~ N(0, gain^2 / (n n_in))`, so that for inputs of unit size `W(u)` has a
      spectral radius about `gain`; the default 0.5 keeps the map contracting.
    - `key`: a `jax.random` key.
    """

    w: Float[Array, "n n n_in"]
    b: Float[Array, " n"]
    V: Float[Array, "n_out n"]
    c: Float[Array, " n_out"]
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
            raise ValueError(f"SecondOrder sizes must be positive, got n={n}, n_in={n_in}, n_out={n_out}.")
        k1, k2, k3 = jr.split(key, 3)
        self.w = normal_init(k1, (n, n, n_in), gain / jnp.sqrt(n * n_in))
        self.b = jnp.zeros((n,))
        self.V = normal_init(k2, (n_out, n), 1.0 / jnp.sqrt(n))
        self.c = jnp.zeros((n_out,))
        self.activation = _act.materialise(activation, n, k3)
        self.n_state, self.n_in, self.n_out = n, n_in, n_out

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        v = self.b + jnp.einsum("kij,i,j->k", self.w, r, x)
        return -r + self.activation(v)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), self.w.dtype)

    def readout(self, r: State) -> Readout:
        return self.V @ r + self.c
