from ._base import AbstractDenseSensitivity, jvp_columns


class Exact(AbstractDenseSensitivity):
    r"""Exact RTRL: the whole `n x m` sensitivity `p = dr/dw` propagated with the exact
    `J p`, formed as a JVP of the linearised vector field vmapped over the `m` parameter
    columns (no `n x n` Jacobian, no one-hot tangents).

    Cost per step: time O(n^2 m) for `J p` (for dense networks one `(n, n) x (n, m)` matrix
    product) plus O(n cost(F)) for the immediate term `dF/dw` (a batched VJP over the `n`
    units); memory O(nm) for `p` and `dF/dw`. For a CTRNN `m ~ n^2`: O(n^4) time and O(n^3)
    memory per step, independent of the trajectory length.

    Exact: equals BPTT on the same discretisation to rounding.
    """

    def mask(self, immediate):
        del immediate
        return None

    def propagate(self, jvp, r, p):
        del r
        return jvp_columns(jvp, p)
