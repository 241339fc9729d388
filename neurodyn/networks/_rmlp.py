import itertools
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, State, Time
from ._base import AbstractNetwork, normal_init


class RecurrentMLP(AbstractNetwork):
    r"""The recurrent multilayer perceptron (Puskorius & Feldkamp 1994; Haykin 2009, ch. 15): stacked recurrent layers, each fed by
    the NEW value of the layer below,

    `x_{I,n+1} = f(W_I x_{I,n} + U_I u_n + b_I)`,
    `x_{II,n+1} = f(W_II x_{II,n} + U_II x_{I,n+1} + b_II)`, ...

    As a vector field each layer reads the lower layer's Euler-updated value `x_l + F_l`:
    `F_{l} = -x_l + f(W_l x_l + U_l (x_{l-1} + F_{l-1}) + b_l)`, which is exactly the discrete RMLP's
    recursion for Euler with `dt = 1` and has the same steady states (there `F_{l-1} = 0`).
    The Jacobian stays block lower-triangular (a layer depends on itself and those below).
    The readout is a linear map `V x_L` of the top layer. Cost O(sum_l n_l (n_l + n_{l-1})).

    **Arguments:**

    - `sizes`: `(n_in, n_1, ..., n_L, n_out)`, at least one recurrent layer.
    - `activation`: `f` of every layer, any `nd.activations` member (learnable ones get
      parameters per layer).
    - `gain`: each `W_l ~ N(0, gain^2 / n_l)`, spectral radius about `gain`; the default 0.5
      with `|f'| <= 1` makes every layer's map a contraction.
    - `key`: a `jax.random` key.

    !!! warning

        With another solver or `dt != 1` this is not the ODE in which each layer reads the
        lower layer's current state: the upper layers read `x_{l-1} + F_{l-1}`, the value
        one unit of time ahead. Same equilibria, different transients.
    """

    recurrent: tuple[Float[Array, "..."], ...]
    feedforward: tuple[Float[Array, "..."], ...]
    biases: tuple[Float[Array, "..."], ...]
    V: Float[Array, "n_out n_L"]
    activations: tuple[Callable, ...]
    sizes: tuple[int, ...] = eqx.field(static=True)
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(self, sizes: Sequence[int], activation: Callable = _act.tanh, *, gain: float = 0.5, key: PRNGKeyArray):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 3 or min(sizes) < 1:
            raise ValueError(f"RecurrentMLP needs sizes (n_in, n_1, ..., n_L, n_out) with L >= 1, got {sizes}.")
        layers = sizes[1:-1]
        keys = jr.split(key, 3 * len(layers) + 1)
        self.recurrent = tuple(normal_init(keys[i], (s, s), gain / jnp.sqrt(s)) for i, s in enumerate(layers))
        below = (sizes[0],) + layers[:-1]
        self.feedforward = tuple(
            normal_init(keys[len(layers) + i], (s, b), 1.0 / jnp.sqrt(b)) for i, (s, b) in enumerate(zip(layers, below))
        )
        self.biases = tuple(jnp.zeros((s,)) for s in layers)
        self.V = normal_init(keys[-1], (sizes[-1], layers[-1]), 1.0 / jnp.sqrt(layers[-1]))
        # Learnable activations get their parameters per layer, sized to it.
        self.activations = tuple(
            _act.materialise(activation, s, keys[2 * len(layers) + i]) for i, s in enumerate(layers)
        )
        self.sizes = sizes
        self.n_state = sum(layers)
        self.n_in, self.n_out = sizes[0], sizes[-1]

    def layers(self, r):
        return jnp.split(r, list(itertools.accumulate(self.sizes[1:-2])))

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        out, below = [], x
        for xl, W, U, b, f in zip(self.layers(r), self.recurrent, self.feedforward, self.biases, self.activations):
            F = -xl + f(W @ xl + U @ below + b)
            out.append(F)
            below = xl + F  # the layer's new value, read by the layer above
        return jnp.concatenate(out)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), self.V.dtype)

    def readout(self, r: State) -> Readout:
        return self.V @ self.layers(r)[-1]
