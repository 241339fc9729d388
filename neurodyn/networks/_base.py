"""The network interface: a continuous-time vector field `dr/dt = F(r, w, x)`."""

import abc
import sys
import warnings
from collections.abc import Callable, Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Input, Readout, Scalar, State, Time


class AbstractNetwork(eqx.Module):
    """A network is a vector field. Its parameters `w` are its inexact-array leaves.

    Subclasses set `n_state`, `n_in`, `n_out` and implement `__call__`, `init_state` and
    `readout`. The state `r` is a vector of size `n_state`; the input `x` a vector of size
    `n_in`; `readout(r)` is what the loss sees, a vector of size `n_out`. The estimators vmap
    `__call__` over a batch: writing weight products as `nd.networks.matvec(W, r)` rather than
    `W @ r` keeps the batch axis leading (faster, the same numbers).
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


class AbstractInputRescalable(eqx.Module):
    """A capability: a network that knows where its inputs enter, so that
    `nd.training.transition_init` can rescale its input-side weights. A network class lists
    it beside its family's base (`class MyNet(AbstractNetwork, AbstractInputRescalable)`)."""

    @abc.abstractmethod
    def rescale_inputs(self, X: Float[ArrayLike, "N n_in"], scale: float) -> "AbstractInputRescalable":
        """This network with its input-side weights rescaled so that the input drive on the
        data `X` has standard deviation `scale`."""


class AbstractEnergyNetwork(AbstractNetwork):
    """A network whose vector field is a gradient flow, `F = -dE/dr`.

    Its Jacobian `J = -d^2E/dr^2` is symmetric, which equilibrium propagation needs to be
    exact and which lets RBP solve its adjoint with conjugate gradients.
    """

    @abc.abstractmethod
    def energy(self, r: State, x: Input) -> Scalar:
        """The energy `E(r, x)` with `F(r, x) = -dE/dr`."""


def warn_if_slope_jumps_off_zero(owner: str, activations: Iterable[Callable]) -> None:
    """Warns, naming `owner` and the fix, when an energy network's activation has a slope
    that jumps at a nonzero pre-activation (its `slope_jumps`): there the gradient flow
    `-s + rho'(s) * drive` jumps by `rho'`'s jump times the drive, while `-s` is not zero,
    so a unit driven past the jump has no zero of `F` to relax to (see `Hopfield`)."""
    for f in activations:
        jumps = [z for z in getattr(f, "slope_jumps", ()) if z != 0]
        if jumps:
            warnings.warn(
                f"{owner} with {type(f).__name__}, whose slope jumps at z = {jumps}: this network's "
                "vector field -s + rho'(s) * drive is discontinuous there, so a unit driven past "
                "that point (as training grows the weights) has no equilibrium to relax to. Its "
                "relaxation chatters about the jump at every dt0, never converges and ends "
                "stagnated, and EP's and RBP's gradients there are unreliable. Use an activation "
                "with a continuous slope (logistic, tanh, softplus, elu) or one whose jump sits "
                "at z = 0 (relu, leaky_relu, PReLU); ignore this warning only if every unit's "
                "drive stays inside the linear range.",
                stacklevel=_user_stacklevel(),
            )
            return


def _user_stacklevel() -> int:
    """The `stacklevel` of the first caller outside neurodyn and equinox (a constructor runs
    inside equinox's module machinery), so that a warning points at the user's line."""
    level, frame = 2, sys._getframe(2)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(("neurodyn", "equinox")):
        frame, level = frame.f_back, level + 1
    return level


def matvec(A: Float[Array, "m n"], v: Float[Array, "*batch n"]) -> Float[Array, "*batch m"]:
    """`A @ v`, written as `v A^T` (the state's axis contracted, `A`'s rows out).

    The same product, but under `vmap` over states it lowers to `R A^T` with the batch axis
    leading, where `A @ v` lowers to `A R^T` and a transpose of every step's `(n, B)`
    result. On the CPU the gradient of a batch of trajectories ran 1.1x faster for it, the
    stored per-step arrays of BPTT no longer needing a transpose before their GEMMs. The
    built-in CTRNN and Hopfield use it; a network of your own can too (`self.W @ r` is
    correct, this is only faster)."""
    return jax.lax.dot_general(v, A, (((v.ndim - 1,), (1,)), ((), ())))


@jax.custom_jvp
def symmetric_part(A: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """`(A + A^T) / 2`, with the transpose done in row slabs on the CPU for large `A`.

    XLA:CPU fuses a transpose into the elementwise loop that consumes it and reads the
    transposed operand with a stride of one row per element. Once `A` no longer fits in the
    cache, every element costs a cache miss: `(W + W^T) / 2` of a float32 `(1024, 1024)`
    matrix took 3.3-5 ms on a 2-core Xeon, 15x an elementwise pass and 40% of a dense
    Hopfield network's relaxation of a batch of 32. Transposing slabs of 8 rows one at a
    time keeps each slab in the cache: 1.2-2 ms at n = 1024, 12 against 41-46 ms at
    n = 2048. Below 4 MiB the fused loop is as fast; other platforms use `(A + A.T) / 2` as
    it is. The values are the same bit for bit either way.

    Derivatives use `(dA + dA^T) / 2` as written (the slabs' loop, transposed for reverse
    mode, costs as much as the strided loop it replaces). `nd.networks.Hopfield` forms its
    `W_s` with it; a network of your own with symmetric weights can too."""
    if not past_cache(A):
        return _dense_symmetric_part(A)
    n = A.shape[-1]

    def slabs(A):
        k = _SLAB_ROWS
        m = -(-n // k) * k
        P = jnp.pad(A, ((0, m - n), (0, 0)))  # whole slabs of k rows
        T = jax.lax.map(lambda slab: slab.T, P.reshape(m // k, k, n))  # (m/k, n, k)
        return 0.5 * (A + T.transpose(1, 0, 2).reshape(n, m)[:, :n])

    return jax.lax.platform_dependent(A, cpu=slabs, default=_dense_symmetric_part)


@symmetric_part.defjvp
def _symmetric_part_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    return symmetric_part(A), _dense_symmetric_part(dA)


def _dense_symmetric_part(A):
    return 0.5 * (A + jnp.swapaxes(A, -1, -2))


def past_cache(A) -> bool:
    """Whether `A` is a square matrix of at least 4 MiB: where XLA:CPU's fused transpose of
    it turns into a cache miss per element (see `symmetric_part`)."""
    return A.ndim == 2 and A.shape[0] == A.shape[1] and A.size * A.dtype.itemsize >= _PAST_CACHE_BYTES


_SLAB_ROWS = 8
_PAST_CACHE_BYTES = 4 * 2**20


def normal_init(key: PRNGKeyArray, shape: tuple[int, ...], scale: ArrayLike, dtype=None) -> Array:
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jnp.multiply(scale, jax.random.normal(key, shape, dtype))


def scaled_to(W: Float[Array, "n n_in"], X: Float[ArrayLike, "N n_in"], scale: float) -> Float[Array, "n n_in"]:
    """`W` rescaled so that the drive `X @ W.T` has standard deviation `scale` over the data
    (unchanged where the drive is zero)."""
    s = jnp.std(jnp.asarray(X) @ W.T)
    return W * jnp.where(s > 0, scale / s, 1.0).astype(W.dtype)
