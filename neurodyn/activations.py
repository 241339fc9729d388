"""Activation functions (Haykin 2009, ch. 4; Goodfellow et al. 2016, ch. 6), usable by every network.

Each is an `eqx.Module`; fixed ones are exported as ready instances (`nd.activations.tanh`),
learnable ones (`PReLU`, `Maxout`) are classes whose parameters are sized to the layer by the
network that uses them (`materialise`). A plain callable such as `jnp.tanh` also works.
"""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Inexact, PRNGKeyArray


class AbstractActivation(eqx.Module):
    """An elementwise nonlinearity `f`, applied to a vector of pre-activations (real, or
    complex inside holomorphic EP); `f(z)` has the shape of `z`.

    An activation whose slope `f'` jumps declares where, as a class attribute
    `slope_jumps: ClassVar[tuple[float, ...]]` (`HardLogistic`: `(-2.0, 2.0)`); none means
    a continuous slope. Energy networks read it: a jump at a nonzero `z` makes their
    gradient flow discontinuous there (see `nd.networks.Hopfield`). Declare it on an
    activation of your own that has one."""

    @abc.abstractmethod
    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        """Returns `f(z)` elementwise."""


class AbstractParametricActivation(AbstractActivation):
    """An activation with learnable parameters, one set per neuron.

    `materialise(act, n, key)` returns the same activation with parameters of size `n`."""

    @abc.abstractmethod
    def materialise(self, n: int, key: PRNGKeyArray) -> "AbstractParametricActivation":
        """Returns this activation with per-neuron parameters for a layer of `n` units."""


class Identity(AbstractActivation):
    """`f(z) = z`."""

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return z


class Logistic(AbstractActivation):
    """`f(z) = 1 / (1 + exp(-z))`, in (0, 1); `f' = f (1 - f)`."""

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jax.nn.sigmoid(z)


class Tanh(AbstractActivation):
    """`f(z) = tanh(z) = 2 logistic(2z) - 1`, zero-centred."""

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jnp.tanh(z)


def value_and_slope(f: Callable[[Array], Array], z: Inexact[Array, "*shape"]) -> tuple[Array, Array]:
    """`(f(z), f'(z))` elementwise, for an elementwise `f` (an activation or a plain
    callable): the pair the Hopfield field needs.

    For `Logistic` and `Tanh` the pair has a derivative rule of its own, `(f' dz, f'' dz)`
    with `f''` in closed form. A linearisation of the network (BPTT's stored steps, RTRL)
    then keeps two vectors per step for the activation, `f'` and `f''`, where differentiating
    `jax.jvp(f, ...)` kept four intermediate ones. Anything else: `jax.jvp(f, (z,), (1,))`."""
    if isinstance(f, Logistic):
        return _logistic_pair(z)
    if isinstance(f, Tanh):
        return _tanh_pair(z)
    return jax.jvp(f, (z,), (jnp.ones_like(z),))


@jax.custom_jvp
def _logistic_pair(z):
    s = jax.nn.sigmoid(z)
    return s, s * (1 - s)


@_logistic_pair.defjvp
def _logistic_pair_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    s = jax.nn.sigmoid(z)
    d1 = s * (1 - s)
    return (s, d1), (d1 * dz, d1 * (1 - 2 * s) * dz)


@jax.custom_jvp
def _tanh_pair(z):
    t = jnp.tanh(z)
    return t, 1 - t * t


@_tanh_pair.defjvp
def _tanh_pair_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    t = jnp.tanh(z)
    d1 = 1 - t * t
    return (t, d1), (d1 * dz, -2 * t * d1 * dz)


class HardLogistic(AbstractActivation):
    """`f(z) = max(min(0.25 z + 0.5, 1), 0)`: flat past `z = +-2`.

    In an energy network (`Hopfield`, `LayeredHopfield`) a unit driven past `+-2` has no
    equilibrium its relaxation can reach: see `Hopfield`'s warning."""

    slope_jumps: ClassVar[tuple[float, ...]] = (-2.0, 2.0)

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jnp.clip(0.25 * z + 0.5, 0, 1)


class HardTanh(AbstractActivation):
    """`f(z) = max(min(z, 1), -1)`: flat past `z = +-1`.

    In an energy network (`Hopfield`, `LayeredHopfield`) a unit driven past `+-1` has no
    equilibrium its relaxation can reach: see `Hopfield`'s warning."""

    slope_jumps: ClassVar[tuple[float, ...]] = (-1.0, 1.0)

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jnp.clip(z, -1, 1)


class ReLU(AbstractActivation):
    """`f(z) = max(0, z)`."""

    slope_jumps: ClassVar[tuple[float, ...]] = (0.0,)

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jax.nn.relu(z)


class LeakyReLU(AbstractActivation):
    """`f(z) = max(0, z) + slope min(0, z)` (slope 0.01 by default)."""

    slope_jumps: ClassVar[tuple[float, ...]] = (0.0,)

    slope: float = 0.01

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jnp.where(z > 0, z, self.slope * z)


class ELU(AbstractActivation):
    """`f(z) = z` for `z > 0`, `alpha (exp(z) - 1)` otherwise."""

    alpha: float = 1.0

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        safe = jnp.minimum(z, 0)
        return jnp.where(z > 0, z, self.alpha * jnp.expm1(safe))


class Softplus(AbstractActivation):
    """`f(z) = log(1 + exp(z))`, the smooth rectifier."""

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jax.nn.softplus(z)


class PReLU(AbstractParametricActivation):
    """`f_i(z) = max(0, z) + a_i min(0, z)` with a learnable slope `a_i` per neuron.

    **Arguments:**

    - `slope`: the initial slope (a scalar), or the per-neuron slopes themselves.
    """

    slope_jumps: ClassVar[tuple[float, ...]] = (0.0,)
    slope: Float[Array, "*n"]

    def __init__(self, slope: float | ArrayLike = 0.25):
        self.slope = jnp.asarray(slope, dtype=jnp.result_type(float))

    def materialise(self, n: int, key: PRNGKeyArray) -> "AbstractParametricActivation":
        del key
        return PReLU(jnp.broadcast_to(self.slope, (n,)))

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        return jnp.maximum(z, 0) + self.slope * jnp.minimum(z, 0)


class Maxout(AbstractParametricActivation):
    """Maxout with `k` learnable affine pieces per neuron: `f_i(z) = max_j (a_ij z + c_ij)`.

    This is the elementwise maxout unit (each neuron takes the maximum of `k` affine
    functions of its own pre-activation), so that any network can use it as its
    activation. Initialised near `max(z, 0.25 z)` so it starts as a leaky rectifier.

    **Arguments:**

    - `k`: number of affine pieces (at least 2).
    """

    k: int = eqx.field(static=True)
    a: Float[Array, "n k"] | None
    c: Float[Array, "n k"] | None

    def __init__(self, k: int = 2, a: Float[Array, "n k"] | None = None, c: Float[Array, "n k"] | None = None):
        self.k = k
        self.a = a
        self.c = c

    def __check_init__(self):
        if self.k < 2:
            raise ValueError(f"Maxout needs k >= 2 affine pieces, got k={self.k}.")

    def materialise(self, n: int, key: PRNGKeyArray) -> "AbstractParametricActivation":
        slopes = jnp.linspace(1.0, 0.25, self.k)
        a = jnp.broadcast_to(slopes, (n, self.k)) + 0.01 * jr.normal(key, (n, self.k))
        c = jnp.zeros((n, self.k))
        return Maxout(self.k, a, c)

    def __call__(self, z: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
        if self.a is None or self.c is None:
            raise ValueError(
                "Maxout has no parameters yet: pass it to a network (which sizes it), or "
                "call `nd.activations.materialise(Maxout(k), n, key)` first."
            )
        return jnp.max(self.a * z[..., None] + self.c, axis=-1)


def materialise(
    activation: AbstractActivation | Callable[[Array], Array], n: int, key: PRNGKeyArray
) -> AbstractActivation | Callable[[Array], Array]:
    """Sizes a learnable activation's parameters to a layer of `n` units; others pass through."""
    if isinstance(activation, AbstractParametricActivation):
        return activation.materialise(n, key)
    if not callable(activation):
        raise ValueError(f"activation must be a callable such as `nd.activations.tanh`, got {activation!r}.")
    return activation


identity = Identity()
logistic = Logistic()
tanh = Tanh()
hard_logistic = HardLogistic()
hard_tanh = HardTanh()
relu = ReLU()
leaky_relu = LeakyReLU()
elu = ELU()
softplus = Softplus()
