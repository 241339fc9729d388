import itertools
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Inexact, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, State, Time
from ._base import AbstractInputRescalable, AbstractNetwork, normal_init, scaled_to


class Layered(AbstractNetwork, AbstractInputRescalable):
    r"""A feedforward network written as an ODE (Almeida 1987; Pineda 1987):

    `dx_l/dt = -x_l + f_l(W_l x_{l-1} + b_l)`, `l = 1..L`, with `x_0 = x` the input.

    The state is the concatenation `(x_1, ..., x_L)`. Its steady state is the MLP's forward
    pass, and its Jacobian is block lower-triangular (`J + I` is nilpotent of order L), so an
    adjoint iteration is exact after L sweeps and RBP's `v*` is backprop's error terms.

    **Arguments:**

    - `sizes`: `(n_in, n_1, ..., n_L)`; `n_L` is the readout.
    - `activation`: `f` of the hidden layers.
    - `final_activation`: `f_L` of the output layer (identity by default).
    - `key`: a `jax.random` key.
    """

    weights: tuple[Float[Array, "..."], ...]
    biases: tuple[Float[Array, "..."], ...]
    activations: tuple[Callable, ...]
    sizes: tuple[int, ...] = eqx.field(static=True)
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(
        self,
        sizes: Sequence[int],
        activation: Callable = _act.tanh,
        final_activation: Callable = _act.identity,
        *,
        key: PRNGKeyArray,
    ):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"Layered needs sizes (n_in, n_1, ..., n_L) with L >= 1 positive sizes, got {sizes}.")
        keys = jr.split(key, 2 * (len(sizes) - 1))
        self.weights = tuple(
            normal_init(keys[i], (sizes[i + 1], sizes[i]), 1.0 / jnp.sqrt(sizes[i])) for i in range(len(sizes) - 1)
        )
        self.biases = tuple(jnp.zeros((s,)) for s in sizes[1:])
        acts = [activation] * (len(sizes) - 2) + [final_activation]
        self.activations = tuple(
            _act.materialise(a, s, keys[len(sizes) - 1 + i]) for i, (a, s) in enumerate(zip(acts, sizes[1:]))
        )
        self.sizes = sizes
        self.n_state = sum(sizes[1:])
        self.n_in = sizes[0]
        self.n_out = sizes[-1]

    def layers(self, r: State) -> list[Inexact[Array, " _"]]:
        """Splits the state into the layer activities `(x_1, ..., x_L)`."""
        return jnp.split(r, list(itertools.accumulate(self.sizes[1:-1])))

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        xs = self.layers(r)
        below = [x] + xs[:-1]
        out = [-xl + f(W @ xb + b) for xl, xb, W, b, f in zip(xs, below, self.weights, self.biases, self.activations)]
        return jnp.concatenate(out)

    def forward(self, x: Float[Array, " n_in"]) -> Float[Array, " n"]:
        """The MLP's forward pass, `x_l = f_l(W_l x_{l-1} + b_l)`: the steady state."""
        out, h = [], x
        for W, b, f in zip(self.weights, self.biases, self.activations):
            h = f(W @ h + b)
            out.append(h)
        return jnp.concatenate(out)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), dtype=self.weights[0].dtype)

    def rescale_inputs(self, X: Float[ArrayLike, "N n_in"], scale: float) -> "Layered":
        """Each layer in turn, on the activities of the (rescaled) layer below, so every
        layer's fields have standard deviation `scale` over the data `X`."""
        weights, below = list(self.weights), jnp.asarray(X)
        for i, (W, b, f) in enumerate(zip(self.weights, self.biases, self.activations)):
            weights[i] = W = scaled_to(W, below, scale)
            below = jax.vmap(f)(below @ W.T + b[None])
        return eqx.tree_at(lambda m: m.weights, self, tuple(weights))

    def readout(self, r: State) -> Readout:
        return r[self.n_state - self.n_out :]
