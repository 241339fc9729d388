"""Centered EP against nd.relax alone and the diffrax ImplicitAdjoint peer, on a Hopfield
network (float32)."""

import jax.random as jr

import neurodyn as nd

from ._steady_peer import ours_functions, peer_functions, rel
from ._timing import row, time_fn


def run(quick: bool = False, large: bool = False):
    rows = []
    sizes = [(64, 8)] if quick else ([(1024, 256)] if large else [(256, 32)])
    for n, B in sizes:
        k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
        net = nd.networks.Hopfield(64, n - 10, 10, key=k1)
        xs, ys = jr.uniform(k2, (B, 64)), jr.uniform(k3, (B, 10))
        relax, ours = ours_functions(nd.EP(beta=0.05, variant="centered"))
        _, ref = ours_functions(nd.RBP(adjoint=nd.adjoint.Krylov(rtol=1e-6)), rtol=1e-6, atol=1e-7)
        _, peer = peer_functions()
        (_, g_ours, _), (_, g_peer), (_, g_ref, _) = ours(net, xs, ys), peer(net, xs, ys), ref(net, xs, ys)
        extra = dict(ours_rel_err=rel(g_ours, g_ref), peer_rel_err=rel(g_peer, g_ref))
        t_relax, _ = time_fn(relax, net, xs)
        t_ours, _ = time_fn(ours, net, xs, ys)
        t_peer, _ = time_fn(peer, net, xs, ys, repeats=3)
        problem = f"Hopfield n={n} B={B} float32, centered EP beta=0.05"
        rows.append(row("ep", problem, "nd.EP value_and_grad", "nd.relax alone", t_ours, t_relax, "<= 2.5x", **extra))
        rows.append(row("ep", problem, "nd.EP value_and_grad", "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event)", t_ours, t_peer, "<= 0.7x", **extra))
    return rows
