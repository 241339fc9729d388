import jax.tree_util as jtu

from ._base import AbstractDenseSensitivity, jvp_columns


class SnAp1(AbstractDenseSensitivity):
    r"""SnAp-1 (Menick et al. 2021): keep only `dr_i/dw_j` for the units `i` that `w_j`
    acts on immediately (the sparsity pattern of `dF/dw`), and drop every other entry of
    `p` at every step:

    `dp/dt = M ∘ (J p + dF/dw)`, `M = [dF/dw != 0]`.

    The pattern `M` is read from the immediate Jacobian at two random states and inputs.
    For a CTRNN each `W_ij`, `U_ij`, `b_i` feeds unit `i` only, so SnAp-1 keeps one entry
    per parameter (it then equals the diagonal approximation); for parameters shared by
    several units (a symmetric Hopfield `W_ij` feeds `i` and `j`) it keeps the block of `J`
    among those units.

    Exact when `J` is diagonal (e.g. a diagonal recurrent matrix), since then no
    sensitivity ever leaves the pattern. Biased otherwise: the influence of `w_j` through
    other units is lost.

    Cost of this implementation: time O(n^2 m) and memory O(nm) per step, like exact RTRL:
    the kept entries are stored inside the dense `(n, *w.shape)` layout and `J p` is the
    exact product, masked. It reproduces SnAp-1's gradient (its bias, for comparisons and
    online learning), not its savings, on any network (parameters feeding several units,
    traced connectivity indices). `nd.rtrl.SparseSnAp1()` is the compressed layout (O(m)
    memory, O(m + n cost(F)) time, the same gradient) for networks whose parameters each
    feed one unit (CTRNN).

    !!! warning

        Use it to study the approximation; for memory and speed on large networks use
        `nd.rtrl.SparseSnAp1()` where it applies, `nd.rtrl.Diagonal()` (O(nm) time) or BPTT.
    """

    def mask(self, immediate):
        first, second = immediate(0), immediate(1)
        return jtu.tree_map(lambda a, b: (a != 0) | (b != 0), first, second)

    def propagate(self, jvp, r, p):
        del r
        return jvp_columns(jvp, p)
