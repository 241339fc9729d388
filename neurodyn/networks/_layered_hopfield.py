import itertools
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Inexact, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, Scalar, State, Time
from ._base import AbstractEnergyNetwork, AbstractInputRescalable, normal_init, scaled_to, warn_if_slope_jumps_off_zero


class LayeredHopfield(AbstractEnergyNetwork, AbstractInputRescalable):
    r"""The layered Hopfield network of equilibrium propagation (Scellier & Bengio 2017):
    input, hidden layers, output, with symmetric couplings between adjacent layers only.

    State `r = (s_1, ..., s_L)` (hidden layers, then the output layer `s_L`); the input
    `x = s_0` is clamped and enters as itself. With `rho` the activation,

    `E(r, x) = 1/2 sum_l ||s_l||^2 - sum_l rho(s_l)^T W_l rho(s_{l-1}) - sum_l b_l^T rho(s_l)`

    (with `rho(s_0) := x`), and the vector field is the gradient flow

    `ds_l/dt = -dE/ds_l = -s_l + rho'(s_l) * (W_l rho(s_{l-1}) + W_{l+1}^T rho(s_{l+1}) + b_l)`

    (no `W_{L+1}` term for the output layer). The same `W_l` carries the signal up and,
    transposed, down: the Jacobian `-d^2E/dr^2` is symmetric, which EP needs to be exact.
    Compared with the fully connected `Hopfield`, whose `W_s` couples every pair of units,
    this one costs O(sum_l n_l n_{l-1}) per evaluation. The readout is the output layer.

    **Arguments:**

    - `sizes`: `(n_in, n_1, ..., n_L)`; `n_L = n_out`, the output layer (at least 2 entries).
    - `activation`: `rho`, any `nd.activations` member (learnable ones get parameters per
      layer); smooth choices (`logistic`, default) keep `J` well defined. One whose slope
      jumps at a nonzero pre-activation (`hard_logistic`, `hard_tanh`) warns: a unit
      driven past the jump has no equilibrium to relax to (see `Hopfield`'s warning).
    - `gain`: `W_l ~ N(0, gain^2 / n_{l-1})`. With `logistic` (`rho' <= 1/4`) the default
      0.5 makes the relaxation a contraction with a unique, stable equilibrium, which EP
      and RBP need.
    - `key`: a `jax.random` key.

    !!! warning

        With `rho' = 1` (identity, ReLU on its positive side) the linear part of `J` is
        `-I + [[0, W^T], [W, 0]]`: the equilibrium is stable only while the largest singular
        value of every `W_l` stays below about 1. Keep `gain` small for such activations.
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
        activation: Callable = _act.logistic,
        *,
        gain: float = 0.5,
        key: PRNGKeyArray,
    ):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(
                f"LayeredHopfield needs sizes (n_in, n_1, ..., n_out) with at least an input and "
                f"an output layer, all positive, got {sizes}."
            )
        L = len(sizes) - 1
        keys = jr.split(key, 2 * L)
        self.weights = tuple(
            normal_init(keys[i], (sizes[i + 1], sizes[i]), gain / jnp.sqrt(sizes[i])) for i in range(L)
        )
        self.biases = tuple(jnp.zeros((s,)) for s in sizes[1:])
        self.activations = tuple(_act.materialise(activation, s, keys[L + i]) for i, s in enumerate(sizes[1:]))
        warn_if_slope_jumps_off_zero("LayeredHopfield", self.activations)
        self.sizes = sizes
        self.n_state = sum(sizes[1:])
        self.n_in = sizes[0]
        self.n_out = sizes[-1]

    def layers(self, r: State) -> list[Inexact[Array, " _"]]:
        """Splits the state into the layers `(s_1, ..., s_L)`."""
        return jnp.split(r, list(itertools.accumulate(self.sizes[1:-1])))

    def energy(self, r: State, x: Input) -> Scalar:
        ss = self.layers(r)
        rhos = [x] + [f(s) for f, s in zip(self.activations, ss)]
        E = 0.5 * jnp.sum(r * r)
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            E = E - rhos[i + 1] @ (W @ rhos[i]) - b @ rhos[i + 1]
        return E

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        ss = self.layers(r)
        # rho and rho' of every layer in one pass each (rho' by a JVP: any activation).
        pairs = [jax.jvp(f, (s,), (jnp.ones_like(s),)) for f, s in zip(self.activations, ss)]
        rhos = [x] + [p[0] for p in pairs]
        L = len(ss)
        out = []
        for i in range(L):
            drive = self.weights[i] @ rhos[i] + self.biases[i]
            if i + 1 < L:
                drive = drive + self.weights[i + 1].T @ rhos[i + 2]
            out.append(-ss[i] + pairs[i][1] * drive)
        return jnp.concatenate(out)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), dtype=self.weights[0].dtype)

    def rescale_inputs(self, X: Float[ArrayLike, "N n_in"], scale: float) -> "LayeredHopfield":
        """The input weights `W_1` rescaled: the input drive `W_1 x` has standard deviation
        `scale` over `X`. The couplings between the layers carry the signal both ways (the
        same `W_l` up and, transposed, down) and keep their gain, which sets the stability."""
        return eqx.tree_at(lambda m: m.weights[0], self, scaled_to(self.weights[0], X, scale))

    def readout(self, r: State) -> Readout:
        return r[self.n_state - self.n_out :]
