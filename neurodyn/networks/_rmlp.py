import itertools
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .. import activations as _act
from ._base import AbstractNetwork, normal_init


class RecurrentMLP(AbstractNetwork):
    r"""The recurrent multilayer perceptron (seed 004): stacked recurrent layers, each fed by
    the NEW value of the layer below,

    `x_{I,n+1} = f(W_I x_{I,n} + U_I u_n + b_I)`,
    `x_{II,n+1} = f(W_II x_{II,n} + U_II x_{I,n+1} + b_II)`, ...

    As a vector field each layer reads the lower layer's Euler-updated value `x_l + F_l`:
    `F_{l} = -x_l + f(W_l x_l + U_l (x_{l-1} + F_{l-1}) + b_l)`, which is exactly the seed's
    recursion for Euler with `dt = 1` and has the same steady states (there `F_{l-1} = 0`).
    The readout is a linear map of the top layer.

    **Arguments:** `sizes` = `(n_in, n_1, ..., n_L, n_out)`, `activation`, `gain`, `key`.
    """

    recurrent: tuple[Float[Array, "..."], ...]
    feedforward: tuple[Float[Array, "..."], ...]
    biases: tuple[Float[Array, "..."], ...]
    V: Float[Array, "n_out n_L"]
    activation: Callable
    sizes: tuple[int, ...] = eqx.field(static=True)
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(self, sizes: Sequence[int], activation: Callable = _act.tanh, *, gain: float = 0.5, key: PRNGKeyArray):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 3:
            raise ValueError(f"RecurrentMLP needs sizes (n_in, n_1, ..., n_L, n_out) with L >= 1, got {sizes}.")
        layers = sizes[1:-1]
        keys = jr.split(key, 2 * len(layers) + 2)
        self.recurrent = tuple(normal_init(keys[i], (s, s), gain / jnp.sqrt(s)) for i, s in enumerate(layers))
        below = (sizes[0],) + layers[:-1]
        self.feedforward = tuple(
            normal_init(keys[len(layers) + i], (s, b), 1.0 / jnp.sqrt(b)) for i, (s, b) in enumerate(zip(layers, below))
        )
        self.biases = tuple(jnp.zeros((s,)) for s in layers)
        self.V = normal_init(keys[-2], (sizes[-1], layers[-1]), 1.0 / jnp.sqrt(layers[-1]))
        self.activation = _act.materialise(activation, 1, keys[-1])
        self.sizes = sizes
        self.n_state = sum(layers)
        self.n_in, self.n_out = sizes[0], sizes[-1]

    def layers(self, r):
        return jnp.split(r, list(itertools.accumulate(self.sizes[1:-2])))

    def __call__(self, t, r, x):
        del t
        out, below = [], x
        for xl, W, U, b in zip(self.layers(r), self.recurrent, self.feedforward, self.biases):
            F = -xl + self.activation(W @ xl + U @ below + b)
            out.append(F)
            below = xl + F  # the layer's new value, read by the layer above
        return jnp.concatenate(out)

    def init_state(self, x):
        return jnp.zeros((self.n_state,), self.V.dtype)

    def readout(self, r):
        return self.V @ self.layers(r)[-1]
