"""Centered EP against `nd.relax` alone and the diffrax `ImplicitAdjoint` and optimistix
peers, on one Hopfield network and batch (float32), timed side by side after checking that
the gradients (ours, the peers', a tight Krylov-RBP reference) solve the same problem.

Ours is the batch path, `nd.batch_value_and_grad` (the three relaxations per example, then
one reverse pass of the nudged energies over the batch). Two more rows: the batch path
against the old one (`nd.batch_mean` of the vmapped `nd.value_and_grad`), and `jax.grad`
of the batch loss against the returned `grads`.

Extra fields per row: relative error and cosine of ours and of the peer against the
reference, and the mean free and nudged step counts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._steady_peer import (
    batch_path_rows,
    check_batch_path,
    optimistix_peer_functions,
    ours_functions,
    peer_functions,
    per_example_functions,
    rel,
    through_grad_function,
)
from ._timing import row, time_side_by_side


BETA = 0.05


def _cosine(a, b):
    def flat(t):
        leaves = jax.tree.leaves(eqx.filter(t, eqx.is_inexact_array))
        return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in leaves])

    fa, fb = flat(a), flat(b)
    return float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb)))


def run(quick: bool = False, large: bool = False):
    rows = []
    sizes = [(64, 8)] if quick else ([(1024, 256)] if large else [(256, 32)])
    repeats = 3 if quick else 15
    n_in, n_out = 64, 10
    for n, B in sizes:
        k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
        net = nd.networks.Hopfield(n_in, n - n_out, n_out, key=k1)
        xs, ys = jr.uniform(k2, (B, n_in)), jr.uniform(k3, (B, n_out))
        est = nd.EP(beta=BETA, variant="centered")
        relax, ours = ours_functions(est)
        _, ref = ours_functions(nd.RBP(adjoint=nd.adjoint.JaxGMRES(rtol=1e-6)), rtol=1e-6, atol=1e-7)
        _, peer = peer_functions()
        import lineax as lx

        _, opeer = optimistix_peer_functions(linear_solver=lx.GMRES(rtol=1e-5, atol=1e-6, restart=40))

        (l_ours, g_ours, info), (l_peer, g_peer), (_, g_ref, _) = ours(net, xs, ys), peer(net, xs, ys), ref(net, xs, ys)
        _, g_opt = opeer(net, xs, ys)
        assert bool(jnp.all(info["converged"])), "EP did not converge on the benchmark problem"
        extra = dict(
            ours_rel_err=rel(g_ours, g_ref),
            ours_cosine=_cosine(g_ours, g_ref),
            peer_rel_err=rel(g_peer, g_ref),
            peer_cosine=_cosine(g_peer, g_ref),
            loss_gap=float(abs(l_ours - l_peer) / abs(l_peer)),
            free_steps=float(jnp.mean(info["steps"])),
            nudged_steps=float(jnp.mean(info["nudged_steps"])),
        )
        old, through = per_example_functions(est), through_grad_function(est)
        d_old, d_through = check_batch_path("ep", net, xs, ys, ours, old, through)
        t_ours, t_through, t_relax, t_old, t_peer, t_opt = time_side_by_side(
            [
                (ours, net, xs, ys),
                (through, net, xs, ys),
                (relax, net, xs),
                (old, net, xs, ys),
                (peer, net, xs, ys),
                (opeer, net, xs, ys),
            ],
            repeats=repeats,
        )
        problem = f"Hopfield n={n} B={B} float32, centered EP beta={BETA}"
        label = "nd.EP batch_value_and_grad"
        rows.append(row("ep", problem, label, "nd.relax alone", t_ours, t_relax, "<= 2.5x", **extra))
        rows.append(
            row(
                "ep",
                problem,
                label,
                "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event)",
                t_ours,
                t_peer,
                "<= 0.5x",
                **extra,
            )
        )
        rows.append(
            row(
                "ep",
                problem,
                label,
                "optimistix fixed_point + ImplicitAdjoint (lineax GMRES)",
                t_ours,
                t_opt,
                "<= 0.5x",
                ours_rel_err=extra["ours_rel_err"],
                peer_rel_err=rel(g_opt, g_ref),
                peer_cosine=_cosine(g_opt, g_ref),
            )
        )
        rows += batch_path_rows("ep", problem, "nd.EP", t_ours, t_old, t_through, d_old, d_through)
    return rows
