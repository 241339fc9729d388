from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, Scalar, State, Time
from . import _sparse
from ._base import (
    AbstractEnergyNetwork,
    AbstractInputRescalable,
    matvec,
    normal_init,
    past_cache,
    scaled_to,
    symmetric_part,
    warn_if_slope_jumps_off_zero,
)


class Hopfield(AbstractEnergyNetwork, AbstractInputRescalable):
    r"""The continuous Hopfield network of equilibrium propagation (Scellier & Bengio 2017).

    State `r = (h, o)`: `n_hidden` hidden units then `n_out` output units; the input `x`
    is clamped. With `rho` the activation and `W_s = (W + W^T)/2` with zero diagonal,

    `E(r, x) = 1/2 ||r||^2 - 1/2 rho(r)^T W_s rho(r) - rho(r)^T (U x + b)`

    `dr/dt = -dE/dr = -r + rho'(r) * (W_s rho(r) + U x + b)`.

    The Jacobian is `-d^2E/dr^2`, symmetric. The readout is the output units `o` themselves.

    **Arguments:**

    - `n_in`, `n_hidden`, `n_out`: sizes.
    - `activation`: `rho`; smooth choices (`logistic`, default) keep `J` well defined, and
      one whose slope jumps off zero (`hard_logistic`, `hard_tanh`) warns: see below.
    - `gain`: scale of the symmetric weights, `N(0, gain^2/n)`.
    - `density`: the fraction of connections present (a random symmetric pattern fixed by
      `key`); below 1, the strict upper triangle's values are stored with integer indices
      and the vector field, the energy, their VJPs and JVPs cost O(nnz) instead of O(n^2).
      The scale is raised so that `W_s`'s spectral radius (about `sqrt(2) gain`, dense or
      not) does not change with the density.
    - `mask`: an explicit boolean `(n, n)` connectivity instead of `density`: it must be
      symmetric with a zero diagonal (a `ValueError` says how to make it so).
    - `key`: a `jax.random` key.

    !!! warning

        An activation whose slope jumps at a nonzero pre-activation, such as `hard_logistic`
        (flat past `z = +-2`) and `hard_tanh` (past `+-1`), makes `F` discontinuous there:
        just inside, `F = -z + rho'(z) * drive`; just outside, `F = -z`, which is not zero.
        A unit driven past the jump (`|drive| > 8` for `hard_logistic`, `> 1` for
        `hard_tanh`) has its energy minimum exactly at the jump, where `F` has no zero: the
        relaxation chatters about it at any `dt0`, its residual stays of order one, and it
        ends stagnated. Training that grows the weights gets there: in a `LayeredHopfield`
        (40, 100, 10) with `hard_logistic` trained on MNIST-1D (Adam 1e-2), the examples
        whose relaxation failed still failed after 200 000 steps at `dt0` 1, 0.5 and 0.1,
        and at 0.1 99.7% of their squared residual sat on units within 0.3 of the jump. The
        constructor warns; use an activation with a continuous slope, or one whose jump is
        at `z = 0` (`relu`), where `F = -z` is zero. Scellier & Bengio (2017) keep hard-sigmoid states in range by
        clipping them after each step, a projected flow that is not an ODE `dr/dt = F`.
        `Maxout`'s kinks move with its learned offsets: watch `info["result"]`.

    !!! warning

        Sparse connectivity pays off only at low density (a few percent): a sparse product
        is a gather and a scatter-add, several times the cost per connection of a dense
        product; see `CTRNN` and `experiments/benchmarks/sparse.py`.
    """

    W: Float[Array, "n n"] | Float[Array, " nnz"]
    W_index: Int[Array, "2 nnz"] | None
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
        density: float = 1.0,
        mask=None,
        key: PRNGKeyArray,
    ):
        if min(n_in, n_hidden, n_out) < 1:
            raise ValueError(f"Hopfield sizes must be positive, got n_in={n_in}, n_hidden={n_hidden}, n_out={n_out}.")
        n = n_hidden + n_out
        # The dense split is the one before sparsity existed: the same key gives the same
        # dense network; the mask's key is derived apart.
        kw, ku, ka = jr.split(key, 3)
        _sparse.check_density(density, mask)
        if mask is None and density == 1:
            self.W = normal_init(kw, (n, n), gain / jnp.sqrt(n))
            self.W_index = None
        else:
            if mask is None:
                mask = _sparse.random_mask(jr.fold_in(key, 1), n, density, symmetric=True)
            index = _sparse.indices(_sparse.as_mask(mask, n, symmetric=True, who="Hopfield"), upper=True)
            # Dense: W_s = (W + W^T)/2 has off-diagonal entries of variance gain^2 / (2n),
            # so its spectral radius is about sqrt(2) gain (semicircle law). Entries of
            # variance gain^2 / (2 n p), p the fraction present, keep that radius.
            frac = max(2 * index.shape[1], 1) / (n * n)
            self.W = normal_init(kw, (index.shape[1],), gain / jnp.sqrt(2 * n * frac))
            self.W_index = index
        self.U = normal_init(ku, (n, n_in), 1.0 / jnp.sqrt(n_in))
        self.b = jnp.zeros((n,))
        self.activation = _act.materialise(activation, n, ka)
        warn_if_slope_jumps_off_zero("Hopfield", [self.activation])
        self.n_hidden = n_hidden
        self.n_state = n
        self.n_in = n_in
        self.n_out = n_out

    @property
    def symmetric_weights(self) -> Float[Array, "n n"]:
        """`W_s = (W + W^T)/2` with zero diagonal: the weights the dynamics use (dense)."""
        if self.W_index is not None:
            return _sparse.densify(self.W, self.W_index, self.n_state, symmetric=True)
        return _dense_symmetric_weights(self.W)

    def coupling(self, v):
        """`W_s v`, O(nnz) for sparse connectivity."""
        if self.W_index is not None:
            return _sparse.symmetric_matvec(self.W, self.W_index, v, self.n_state)
        if past_cache(self.W):
            return _dense_coupling(self.W, v)
        # A small W's transpose is cheap (in the cache): the formula as written, whose
        # reverse pass sums the weight gradient over every use before one transpose.
        return matvec(self.symmetric_weights, v)

    def energy(self, r: State, x: Input) -> Scalar:
        rho = self.activation(r)
        if self.W_index is not None:
            pair = rho @ self.coupling(rho)
        else:
            # `rho^T W_s rho = rho^T W rho - sum_i W_ii rho_i^2` for any `W`: the same value
            # without `W_s`, whose transpose of `W` (and of the gradient, backwards) XLA
            # fuses into a strided loop. The gradient in `W` is `-rho rho^T / 2` off the
            # diagonal, one matrix product over a batch.
            pair = rho @ matvec(self.W, rho) - jnp.diagonal(self.W) @ (rho * rho)
        return 0.5 * jnp.sum(r * r) - 0.5 * pair - rho @ (matvec(self.U, x) + self.b)

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        rho, drho = _act.value_and_slope(self.activation, r)
        return -r + drho * (self.coupling(rho) + matvec(self.U, x) + self.b)

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), dtype=self.W.dtype)

    def rescale_inputs(self, X: Float[ArrayLike, "N n_in"], scale: float) -> "Hopfield":
        """The input weights `U` rescaled: the input drive `U x` has standard deviation
        `scale` over `X`; the recurrent weights keep their gain, which sets the stability."""
        return eqx.tree_at(lambda m: m.U, self, scaled_to(self.U, X, scale))

    def readout(self, r: State) -> Readout:
        return r[self.n_hidden :]


@jax.custom_jvp
def _dense_coupling(W, v):
    """`W_s v` with `W_s = (W + W^T)/2` off the diagonal: one product with `W_s`, whose
    transpose of `W` is formed once per call (`symmetric_part`).

    Its derivative in `W` is written without `W_s`, `(dW v + dW^T v)/2 - diag(dW) v`: under
    `vmap` over states the reverse pass then forms the weight gradient as two matrix
    products over the batch (`G^T R` and `R^T G`), where the formula's derivative transposes
    the `(n, n)` gradient, a strided loop on the CPU (3 ms at n = 1024, float32). Used past
    4 MiB; below, the formula's derivative (one product, one transpose in the cache) is the
    cheaper."""
    return matvec(_dense_symmetric_weights(W), v)


def _dense_coupling_jvp(primals, tangents):
    W, v = primals
    dW, dv = tangents
    W_s = _dense_symmetric_weights(W)
    out = matvec(W_s, v)
    d_out = jnp.zeros_like(out) if isinstance(dv, SymbolicZero) else matvec(W_s, dv)
    if isinstance(dW, SymbolicZero):
        return out, d_out
    return out, d_out + 0.5 * (matvec(dW, v) + v @ dW) - jnp.diagonal(dW) * v


_dense_coupling.defjvp(_dense_coupling_jvp, symbolic_zeros=True)


def _dense_symmetric_weights(W):
    """`(W + W^T)/2` with a zero diagonal."""
    return symmetric_part(W) * (1 - jnp.eye(W.shape[-1], dtype=W.dtype))
