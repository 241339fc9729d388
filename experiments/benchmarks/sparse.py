"""Sparse connectivity: `nd.value_and_grad` (BPTT and RBP, steady-state objective) on a
CTRNN whose recurrent matrix has density 1, 0.1 and 0.01, stored sparsely (values + integer
indices, O(nnz)) against the same masked matrix stored densely (O(n^2)).

Both sides hold the same weights, so they relax to the same state in the same number of
steps and must give the same gradient (checked, `rel_err`); the ratio is the sparse code
path's time over the dense one's. `nnz_ratio` and `time_vs_density_1` (the sparse path's time
over its own time at density 1) show the O(nnz) scaling; `peak_bytes` is XLA's planned peak
memory of the batched gradient call.
"""

import equinox as eqx
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._steady_peer import ours_functions, rel
from ._timing import peak_bytes, row, time_fn


DENSITIES = (1.0, 0.1, 0.01)


def _pair(n, density, key, n_in=16, n_out=8):
    """The sparse network at `density` and the dense network with the same masked weights."""
    mask = np.ones((n, n), bool) if density == 1 else None
    sparse = nd.networks.CTRNN(n, n_in, n_out, density=density if mask is None else 1.0, mask=mask, key=key)
    dense = nd.networks.CTRNN(n, n_in, n_out, key=key)
    dense = eqx.tree_at(lambda m: m.W, dense, sparse.recurrent_weights)
    dense = eqx.tree_at(lambda m: (m.U, m.b, m.V, m.c), dense, (sparse.U, sparse.b, sparse.V, sparse.c))
    return sparse, dense


def _same_leaves(g_sparse, g_dense, index):
    """The dense gradient restricted to the connections that exist, in the sparse layout:
    the masked-out entries of a dense `W` have a gradient, but they are not parameters of
    the sparse network."""
    return eqx.tree_at(lambda m: m.W, g_dense, g_dense.W[index[0], index[1]])


def _estimators():
    ests = [("BPTT", nd.BPTT())]
    if hasattr(nd, "RBP"):
        ests.append(("RBP", nd.RBP()))
    return ests


def run(quick: bool = False, large: bool = False):
    rows = []
    sizes = [(128, 4)] if quick else ([(1024, 256), (4096, 32)] if large else [(1024, 8)])
    for n, B in sizes:
        k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
        xs, ys = jr.normal(k2, (B, 16)), jr.normal(k3, (B, 8))
        pairs = {d: _pair(n, d, k1) for d in DENSITIES}
        for est_name, est in _estimators():
            _, fn = ours_functions(est)
            base = mem_1 = None
            for d in DENSITIES:
                sparse, dense = pairs[d]
                nnz = int(sparse.W.shape[0])
                (_, g_sparse, info), (_, g_dense, _) = fn(sparse, xs, ys), fn(dense, xs, ys)
                err = rel(g_sparse, _same_leaves(g_sparse, g_dense, sparse.W_index))
                t_s, c_s = time_fn(fn, sparse, xs, ys, repeats=5)
                t_d, c_d = time_fn(fn, dense, xs, ys, repeats=5)
                mem_s, mem_d = peak_bytes(fn, sparse, xs, ys), peak_bytes(fn, dense, xs, ys)
                if base is None:  # density 1 comes first: the sparse path's own baseline
                    base, mem_1 = t_s, mem_s
                rows.append(
                    row(
                        "sparse",
                        f"CTRNN n={n} B={B} float32 steady state, density {d:g} (nnz={nnz})",
                        f"nd.{est_name} value_and_grad, sparse W (O(nnz))",
                        f"nd.{est_name} value_and_grad, dense masked W (O(n^2))",
                        t_s,
                        t_d,
                        "time and memory O(nnz): time_vs_density_1 ~ nnz_ratio",
                        density=d,
                        nnz=nnz,
                        nnz_ratio=nnz / (n * n),
                        time_vs_density_1=t_s / base,
                        us_per_knnz_per_example_step=1e6 * t_s / (B * int(info["steps"].max()) * nnz / 1e3),
                        peak_bytes=mem_s,
                        peer_peak_bytes=mem_d,
                        rel_err=err,
                        fwd_steps=int(info["steps"].max()),
                        compile_s=c_s,
                        peer_compile_s=c_d,
                    )
                )
                # The scaling itself, visible in the markdown table: the sparse path against
                # itself at density 1, to be read against the nnz ratio (and peak memory).
                rows.append(
                    row(
                        "sparse-scaling",
                        f"CTRNN n={n} B={B} float32 steady state, nnz ratio {nnz / (n * n):.4f}, "
                        f"peak MB {mem_s / 2**20:.1f} vs {mem_1 / 2**20:.1f}"
                        if mem_s and mem_1
                        else f"CTRNN n={n} B={B} float32 steady state, nnz ratio {nnz / (n * n):.4f}",
                        f"nd.{est_name}, sparse W, density {d:g}",
                        f"nd.{est_name}, sparse W, density 1",
                        t_s,
                        base,
                        f"~ {nnz / (n * n):.3g} (the nnz ratio)",
                        density=d,
                        nnz=nnz,
                        peak_bytes=mem_s,
                        peer_peak_bytes=mem_1,
                    )
                )
    return rows
