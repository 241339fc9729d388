import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractFieldSensitivity
from ._sparse_snap1 import _units


class RFLO(AbstractFieldSensitivity):
    r"""Random-feedback local online learning's eligibility traces (Murray 2019), in the
    sparse layout of `SparseSnAp1`: one trace per parameter, decaying with the unit's
    leak alone,

    `dp_j/dt = -leak p_j + dF_{u(j)}/dw_j`,

    where `u(j)` is the unit that `w_j` feeds. For a CTRNN (`dr/dt = -r + ...`, leak 1)
    the trace of `W_ij` is the low-pass filtered `f'(h_i) r_j` of the paper: the whole
    recurrent part of `J` is dropped, the self-coupling `J_ii + leak` included, so no JVP
    of `F` is needed. The gradient through the state uses the true `dl/dr` (the paper's
    other half, a fixed random matrix in place of the readout's transpose, is a choice of
    feedback that this strategy leaves to the loss).

    Cost per step: time O(m + cost(F)) (one VJP of `F` for the immediate term), memory
    O(m): the cheapest strategy here. Exact when `J = -leak I` (no recurrent or
    self-coupling: `W = 0`), biased otherwise, more than `SparseSnAp1`, which keeps
    `J_ii`.

    **Arguments:**

    - `leak`: the decay rate of the traces, `1 / tau` (default 1, the leak of
      `nd.networks.CTRNN`).

    !!! warning

        Like `SparseSnAp1`, only for networks whose parameters each feed one unit
        (CTRNN); a symmetric Hopfield network is refused.
    """

    leak: Float[Array, ""]

    def __init__(self, leak: float | ArrayLike = 1.0):
        self.leak = jnp.asarray(leak, dtype=jnp.result_type(float))

    def prepare(self, params, static, n, n_in, dtype):
        return _units(params, static, n, n_in, dtype, who="nd.rtrl.RFLO()")

    def zeros(self, params, n, aux):
        del n, aux
        return jtu.tree_map(jnp.zeros_like, params)

    def restart(self, p, aux):
        del aux
        return jtu.tree_map(jnp.zeros_like, p)

    def derivative(self, F_r, F_w, params, r, p, aux):
        del F_r, aux
        dr, vjp = jax.vjp(F_w, params)
        (immediate,) = vjp(jnp.ones_like(dr))
        dp = jtu.tree_map(lambda a, b: b - self.leak.astype(a.dtype) * a, p, immediate)
        return dr, dp

    def contract(self, p, g_r, aux):
        return jtu.tree_map(lambda a, u: g_r[u].astype(a.dtype) * a, p, aux)
