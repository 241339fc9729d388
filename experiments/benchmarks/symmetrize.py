"""A dense Hopfield network past the cache: its symmetric weights `W_s = (W + W^T)/2` formed in
row slabs (`nd.networks.Hopfield`, through `nd.networks.symmetric_part`) against the same network with the
formula as written (`_FusedTranspose`, which XLA:CPU fuses into one strided loop).

Both hold the same weights and must give the same relaxation and gradients bit for bit
(checked); the ratio is the time with slabs over the time with the fused transpose, for
`nd.relax` of the batch and the batch path of RBP, EP and BPTT (Hopfield n = 1024, B = 32,
float32; quick: B = 4). `sym_ms` is the symmetrisation alone, each way. Below 4 MiB (n < 1024
in float32) both networks run the same program, so there is nothing to compare.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._steady_peer import ours_functions
from ._timing import row, time_side_by_side


class _FusedTranspose(nd.networks.Hopfield):
    """The same network with `W_s` written as the formula: XLA:CPU's fused strided transpose."""

    @property
    def symmetric_weights(self):
        return 0.5 * (self.W + self.W.T) * (1 - jnp.eye(self.n_state, dtype=self.W.dtype))


def run(quick: bool = False, large: bool = False):
    if large:
        return []  # the slabs are the CPU's path; other platforms use the formula as written
    n, B, n_in, n_out = 1024, 4 if quick else 32, 64, 10
    repeats = 2 if quick else 5
    k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
    slabs = nd.networks.Hopfield(n_in, n - n_out, n_out, key=k1)
    fused = _FusedTranspose(n_in, n - n_out, n_out, key=k1)
    xs, ys = jr.uniform(k2, (B, n_in)), jr.uniform(k3, (B, n_out))
    problem = f"dense Hopfield n={n} B={B} float32"
    estimators = [("RBP", nd.RBP()), ("EP", nd.EP(beta=0.05, variant="centered")), ("BPTT", nd.BPTT())]
    labels = ["nd.relax"] + [f"nd.{name} batch_value_and_grad" for name, _ in estimators]
    calls = {}
    for tag, net in (("slabs", slabs), ("fused", fused)):
        relax, _ = ours_functions(nd.RBP())
        calls[tag] = [(relax, net, xs)] + [(ours_functions(est)[1], net, xs, ys) for _, est in estimators]
    # Same numbers both ways: the states, and every estimator's loss, gradient and steps.
    for a, b in zip(calls["slabs"], calls["fused"], strict=True):
        out_a, out_b = a[0](*a[1:]), b[0](*b[1:])
        for u, v in zip(jax.tree.leaves(out_a), jax.tree.leaves(out_b), strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    sym_slabs = jax.jit(nd.networks.symmetric_part)
    sym_fused = jax.jit(lambda W: 0.5 * (W + W.T))
    times = time_side_by_side(
        calls["slabs"] + calls["fused"] + [(sym_slabs, slabs.W), (sym_fused, slabs.W)], repeats=repeats
    )
    k = len(labels)
    t_slabs, t_fused, (t_sym, t_sym_fused) = times[:k], times[k : 2 * k], times[2 * k :]
    extra = dict(sym_ms_slabs=1e3 * t_sym, sym_ms_fused=1e3 * t_sym_fused)
    rows = [
        row(
            "symmetrize",
            problem,
            f"{label}, W_s in row slabs",
            f"{label}, W_s as (W + W.T)/2 fused",
            a,
            b,
            "below 1: the slabs are faster (same values bit for bit)",
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
