"""A dense Hopfield network past the cache, where XLA:CPU's transposes of `(n, n)` arrays
are strided loops: `nd.networks.Hopfield` (its `W_s = (W + W^T)/2` formed in row slabs by
`nd.networks.symmetric_part`, and its coupling's weight gradient formed as two products over
the batch, with no transpose) against the same network with `W_s` and the coupling written
as the formula and differentiated as written (`FormulaHopfield`).

Both hold the same weights and must give the same relaxation bit for bit, the same loss,
steps and outcome, and the same gradients to float32 rounding (`grad_rel_err`); the ratio is
ours over the formula's time, for `nd.relax` of the batch and the batch path of RBP, EP and
BPTT (Hopfield n = 1024, B = 32, float32; quick: B = 4). The last row is the symmetrisation
alone, each way. Below 4 MiB (n < 1024 in float32) both networks run the same program.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._steady_peer import ours_functions, rel
from ._timing import row, time_side_by_side


class FormulaHopfield(nd.networks.Hopfield):
    """The same network with `W_s` and the coupling written as the formula and differentiated
    as written: XLA:CPU's fused strided transposes, forwards and in the weight gradient (the
    reference of this section and of `tests/test_networks.py`)."""

    @property
    def symmetric_weights(self):
        return 0.5 * (self.W + self.W.T) * (1 - jnp.eye(self.n_state, dtype=self.W.dtype))

    def coupling(self, v):
        return nd.networks.matvec(self.symmetric_weights, v)


def run(quick: bool = False, large: bool = False):
    if large:
        return []  # the slabs are the CPU's path; other platforms use the formula as written
    n, B, n_in, n_out = 1024, 4 if quick else 32, 64, 10
    repeats = 2 if quick else 5
    k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
    slabs = nd.networks.Hopfield(n_in, n - n_out, n_out, key=k1)
    fused = FormulaHopfield(n_in, n - n_out, n_out, key=k1)
    xs, ys = jr.uniform(k2, (B, n_in)), jr.uniform(k3, (B, n_out))
    problem = f"dense Hopfield n={n} B={B} float32"
    estimators = [("RBP", nd.RBP()), ("EP", nd.EP(beta=0.05, variant="centered")), ("BPTT", nd.BPTT())]
    labels = ["nd.relax"] + [f"nd.{name} batch_value_and_grad" for name, _ in estimators]
    calls = {}
    for tag, net in (("slabs", slabs), ("fused", fused)):
        relax, _ = ours_functions(nd.RBP())
        calls[tag] = [(relax, net, xs)] + [(ours_functions(est)[1], net, xs, ys) for _, est in estimators]
    # The same relaxation bit for bit, and the same loss, steps and outcome for every
    # estimator; the weight gradients are the same sums in another order (two products over
    # the batch instead of one and a transpose): equal to float32 rounding.
    grad_err = 0.0
    for i, (a, b) in enumerate(zip(calls["slabs"], calls["fused"], strict=True)):
        out_a, out_b = a[0](*a[1:]), b[0](*b[1:])
        if i == 0:
            np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
            continue
        (loss_a, g_a, info_a), (loss_b, g_b, info_b) = out_a, out_b
        np.testing.assert_array_equal(np.asarray(loss_a), np.asarray(loss_b))
        for u, v in zip(jax.tree.leaves(info_a), jax.tree.leaves(info_b), strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        err = float(rel(g_a, g_b))
        assert err < 1e-5, f"{labels[i]}: gradients differ by {err:.2e}"
        grad_err = max(grad_err, err)
    sym_slabs = jax.jit(nd.networks.symmetric_part)
    sym_fused = jax.jit(lambda W: 0.5 * (W + W.T))
    times = time_side_by_side(
        calls["slabs"] + calls["fused"] + [(sym_slabs, slabs.W), (sym_fused, slabs.W)], repeats=repeats
    )
    k = len(labels)
    t_slabs, t_fused, (t_sym, t_sym_fused) = times[:k], times[k : 2 * k], times[2 * k :]
    extra = dict(sym_ms_slabs=1e3 * t_sym, sym_ms_fused=1e3 * t_sym_fused, grad_rel_err=grad_err)
    rows = [
        row(
            "symmetrize",
            problem,
            f"{label}, Hopfield (no (n, n) transposes)",
            f"{label}, W_s as the formula (fused transposes)",
            a,
            b,
            "below 1: ours faster (same states; gradients to float32 rounding)",
            **extra,
        )
        for label, a, b in zip(labels, t_slabs, t_fused, strict=True)
    ]
    rows.append(
        row(
            "symmetrize",
            f"{n} x {n} float32",
            "symmetric_part (row slabs)",
            "(W + W.T)/2 (fused strided loop)",
            t_sym,
            t_sym_fused,
            "below 1: the slabs are faster",
        )
    )
    return rows
