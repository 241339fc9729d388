"""RBP against nd.relax alone and against diffrax ImplicitAdjoint (Tsit5 + PID +
steady_state_event) on the same network; and a scaling table n = 64 ... (4096 on GPU)."""

import jax.random as jr

import neurodyn as nd

from ._steady_peer import ours_functions, peer_functions, rel
from ._timing import peak_bytes, row, time_fn


def _problem(n, B, seed=0):
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = nd.networks.CTRNN(n, 16, 8, key=k1)
    return net, jr.normal(k2, (B, 16)), jr.normal(k3, (B, 8))


def run(quick: bool = False, large: bool = False):
    rows = []
    head = [(64, 8)] if quick else ([(1024, 256)] if large else [(256, 32)])
    for n, B in head:
        net, xs, ys = _problem(n, B)
        relax, ours = ours_functions(nd.RBP())
        # The reference: tight tolerances (a dense LU at n = 1024, B = 256 compiles for minutes).
        _, dense = ours_functions(nd.RBP(adjoint=nd.adjoint.AdjointODE(rtol=1e-7)), rtol=1e-6, atol=1e-7)
        _, peer = peer_functions()
        (_, g_ours, info), (_, g_peer), (_, g_ref, _) = ours(net, xs, ys), peer(net, xs, ys), dense(net, xs, ys)
        e_ours, e_peer = rel(g_ours, g_ref), rel(g_peer, g_ref)
        t_relax, _ = time_fn(relax, net, xs)
        t_ours, _ = time_fn(ours, net, xs, ys)
        t_peer, _ = time_fn(peer, net, xs, ys, repeats=3)
        problem = f"CTRNN n={n} B={B} float32, steady state"
        extra = dict(ours_rel_err=e_ours, peer_rel_err=e_peer, fwd_steps=int(info["steps"].max()),
                     adjoint_steps=int(info["adjoint_steps"].max()))
        rows.append(row("rbp", problem, "nd.RBP value_and_grad", "nd.relax alone", t_ours, t_relax, "<= 1.6x", **extra))
        rows.append(row("rbp", problem, "nd.RBP value_and_grad", "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event)",
                        t_ours, t_peer, "<= 0.5x" if not large else "<= 0.05x (20x faster)", **extra))
    sizes = [64, 128] if quick else ([1024, 4096] if large else [64, 128, 256, 512, 1024])
    for n in sizes:
        net, xs, ys = _problem(n, 256 if large else 8)
        relax, ours = ours_functions(nd.RBP())
        _, _, info = ours(net, xs, ys)
        t, _ = time_fn(ours, net, xs, ys, repeats=3)
        t_r, _ = time_fn(relax, net, xs, repeats=3)
        rows.append(row("rbp-scaling", f"CTRNN n={n} B={xs.shape[0]} float32", "nd.RBP value_and_grad", "nd.relax alone", t, t_r, "memory O(n)",
                        peak_bytes=peak_bytes(ours, net, xs, ys), fwd_steps=int(info["steps"].max()),
                        adjoint_steps=int(info["adjoint_steps"].max())))
    return rows
