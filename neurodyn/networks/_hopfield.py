from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .. import activations as _act
from ._base import AbstractEnergyNetwork, normal_init


class Hopfield(AbstractEnergyNetwork):
    r"""The continuous Hopfield network of equilibrium propagation (Scellier & Bengio 2017).

    State `r = (h, o)`: `n_hidden` hidden units then `n_out` output units; the input `x`
    is clamped. With `rho` the activation and `W_s = (W + W^T)/2` with zero diagonal,

    `E(r, x) = 1/2 ||r||^2 - 1/2 rho(r)^T W_s rho(r) - rho(r)^T (U x + b)`

    `dr/dt = -dE/dr = -r + rho'(r) * (W_s rho(r) + U x + b)`.

    The Jacobian is `-d^2E/dr^2`, symmetric. The readout is the output units `o` themselves.

    **Arguments:**

    - `n_in`, `n_hidden`, `n_out`: sizes.
    - `activation`: `rho`; smooth choices (`logistic`, default) keep `J` well defined.
    - `gain`: scale of the symmetric weights, `N(0, gain^2/n)`.
    - `key`: a `jax.random` key.
    """

    W: Float[Array, "n n"]
    U: Float[Array, "n n_in"]
    b: Float[Array, " n"]
    activation: Callable
    n_hidden: int = eqx.field(static=True)
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_out: int,
        activation: Callable = _act.logistic,
        *,
        gain: float = 0.5,
        key: PRNGKeyArray,
    ):
        if min(n_in, n_hidden, n_out) < 1:
            raise ValueError(
                f"Hopfield sizes must be positive, got n_in={n_in}, n_hidden={n_hidden}, n_out={n_out}."
            )
        n = n_hidden + n_out
        kw, ku, ka = jr.split(key, 3)
        self.W = normal_init(kw, (n, n), gain / jnp.sqrt(n))
        self.U = normal_init(ku, (n, n_in), 1.0 / jnp.sqrt(n_in))
        self.b = jnp.zeros((n,))
        self.activation = _act.materialise(activation, n, ka)
        self.n_hidden = n_hidden
        self.n_state = n
        self.n_in = n_in
        self.n_out = n_out

    @property
    def symmetric_weights(self) -> Float[Array, "n n"]:
        """`W_s = (W + W^T)/2` with zero diagonal: the weights the dynamics use."""
        W = 0.5 * (self.W + self.W.T)
        return W * (1 - jnp.eye(self.n_state, dtype=W.dtype))

    def energy(self, r, x):
        rho = self.activation(r)
        return (
            0.5 * jnp.sum(r * r)
            - 0.5 * rho @ (self.symmetric_weights @ rho)
            - rho @ (self.U @ x + self.b)
        )

    def __call__(self, t, r, x):
        del t
        rho, drho = jax.jvp(self.activation, (r,), (jnp.ones_like(r),))
        return -r + drho * (self.symmetric_weights @ rho + self.U @ x + self.b)

    def init_state(self, x):
        return jnp.zeros((self.n_state,), dtype=self.W.dtype)

    def readout(self, r):
        return r[self.n_hidden :]
