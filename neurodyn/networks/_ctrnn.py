from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .. import activations as _act
from .._custom_types import Input, Readout, State, Time
from . import _sparse
from ._base import AbstractInputRescalable, AbstractNetwork, matvec, normal_init, scaled_to


class CTRNN(AbstractNetwork, AbstractInputRescalable):
    r"""Continuous-time recurrent network with a linear readout.

    - `form="rate"`: `dr/dt = (-r + f(W r + U x + b)) / tau`
    - `form="current"`: `dr/dt = (-r + W f(r) + U x + b) / tau`

    The readout is `V r + c` (rate form) or `V f(r) + c` (current form).
    With `solver=diffrax.Euler(), dt0=tau` the rate form is exactly the discrete-time
    network `r(t) = f(W r(t-1) + U x(t) + b)` (Elman 1990; Williams & Zipser 1989).

    **Arguments:**

    - `n`, `n_in`, `n_out`: number of units, inputs and readout units.
    - `activation`: any `nd.activations` member or elementwise callable.
    - `form`: `"rate"` or `"current"`.
    - `gain`: the recurrent weights are `N(0, gain^2 / n)`, so the spectral radius of `W` is
      about `gain`. With `gain < 1` and `|f'| <= 1` the map is a contraction and the
      equilibrium is unique and stable, which steady-state estimators need. Raise it on
      purpose to leave that regime (chaos sets in near `gain = 1` for `tanh`).
    - `tau`: the time constant.
    - `density`: the fraction of recurrent connections present (random, fixed by `key`);
      below 1, `W` is stored as its `nnz` values with integer indices and the vector field,
      its VJP and JVP cost O(nnz) instead of O(n^2). The scale is raised to
      `gain / sqrt(n density)` so the spectral radius stays about `gain`.
    - `mask`: an explicit boolean `(n, n)` connectivity (`mask[i, j]`: unit `j` feeds unit `i`)
      instead of `density`; concrete (NumPy), fixed for the network's life. The weights
      are then the leaf `W` of shape `(nnz,)` at the integer indices `W_index` (rows, cols),
      which are not parameters.
    - `key`: a `jax.random` key.

    !!! warning

        A sparse product is a gather and a scatter-add, several times the cost per
        connection of a dense matrix product (BLAS on CPU). It pays off only at low
        density: on CPU, n = 1024, the gradient at density 0.01 costs 0.2-0.3x the dense
        one and at 0.1 about 1.2-2.3x (`experiments/benchmarks/sparse.py`). Above a few
        percent, prefer a dense `W` (with a fixed mask applied in your loss, if need be).
    """

    W: Float[Array, "n n"] | Float[Array, " nnz"]
    W_index: Int[Array, "2 nnz"] | None
    U: Float[Array, "n n_in"]
    b: Float[Array, " n"]
    V: Float[Array, "n_out n"]
    c: Float[Array, " n_out"]
    activation: Callable
    form: Literal["rate", "current"] = eqx.field(static=True)
    tau: float = eqx.field(static=True)
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(
        self,
        n: int,
        n_in: int,
        n_out: int,
        activation: Callable = _act.tanh,
        form: Literal["rate", "current"] = "rate",
        *,
        gain: float = 0.5,
        tau: float = 1.0,
        density: float = 1.0,
        mask=None,
        key: PRNGKeyArray,
    ):
        if form not in ("rate", "current"):
            raise ValueError(f"CTRNN form must be 'rate' or 'current', got {form!r}.")
        if min(n, n_in, n_out) < 1:
            raise ValueError(f"CTRNN sizes must be positive, got n={n}, n_in={n_in}, n_out={n_out}.")
        # The dense split is the one before sparsity existed: the same key gives the same
        # dense network; the mask's key is derived apart.
        kw, ku, kv, ka = jr.split(key, 4)
        _sparse.check_density(density, mask)
        if mask is None and density == 1:
            self.W = normal_init(kw, (n, n), gain / jnp.sqrt(n))
            self.W_index = None
        else:
            if mask is None:
                mask = _sparse.random_mask(jr.fold_in(key, 1), n, density)
            index = _sparse.indices(_sparse.as_mask(mask, n, who="CTRNN"))
            # Entries N(0, gain^2 / (n p)) with p the fraction present: each row sums about
            # n p of them, so the spectral radius stays about `gain`, as in the dense case.
            frac = max(index.shape[1], 1) / (n * n)
            self.W = normal_init(kw, (index.shape[1],), gain / jnp.sqrt(n * frac))
            self.W_index = index
        self.U = normal_init(ku, (n, n_in), 1.0 / jnp.sqrt(n_in))
        self.b = jnp.zeros((n,))
        self.V = normal_init(kv, (n_out, n), 1.0 / jnp.sqrt(n))
        self.c = jnp.zeros((n_out,))
        self.activation = _act.materialise(activation, n, ka)
        self.form = form
        self.tau = tau
        self.n_state = n
        self.n_in = n_in
        self.n_out = n_out

    @property
    def recurrent_weights(self) -> Float[Array, "n n"]:
        """The dense `(n, n)` recurrent matrix (for inspection and small-n references; the
        dynamics never build it)."""
        if self.W_index is None:
            return self.W
        return _sparse.densify(self.W, self.W_index, self.n_state)

    def recurrent(self, v):
        """`W v`: dense, or O(nnz) for sparse connectivity."""
        if self.W_index is None:
            return matvec(self.W, v)
        return _sparse.matvec(self.W, self.W_index, v, self.n_state)

    def __call__(self, t: Time, r: State, x: Input) -> State:
        del t
        f = self.activation
        if self.form == "rate":
            drdt = -r + f(self.recurrent(r) + matvec(self.U, x) + self.b)
        else:
            drdt = -r + self.recurrent(f(r)) + matvec(self.U, x) + self.b
        return drdt / self.tau

    def init_state(self, x: Input) -> State:
        return jnp.zeros((self.n_state,), dtype=self.W.dtype)

    def rescale_inputs(self, X: Float[ArrayLike, "N n_in"], scale: float) -> "CTRNN":
        """The input weights `U` rescaled: the input drive `U x` has standard deviation
        `scale` over `X`; the recurrent weights keep their gain, which sets the stability."""
        return eqx.tree_at(lambda m: m.U, self, scaled_to(self.U, X, scale))

    def readout(self, r: State) -> Readout:
        h = r if self.form == "rate" else self.activation(r)
        return self.V @ h + self.c
