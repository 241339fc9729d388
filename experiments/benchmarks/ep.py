"""Centered EP against `nd.relax` alone and the diffrax `ImplicitAdjoint` peer, on one
Hopfield network and batch (float32), timed side by side after checking that all three
gradients (ours, the peer's, a tight Krylov-RBP reference) solve the same problem.

Extra fields per row: relative error and cosine of ours and of the peer against the
reference, the mean free and nudged step counts, and `ours_no_batch_mean_ms`: the vmapped
per-example EP gradients alone, before `nd.batch_mean` averages them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._steady_peer import optimistix_peer_functions, ours_functions, peer_functions, rel
from ._timing import row, time_fn


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
    n_in, n_out = 64, 10
    for n, B in sizes:
        k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
        net = nd.networks.Hopfield(n_in, n - n_out, n_out, key=k1)
        xs, ys = jr.uniform(k2, (B, n_in)), jr.uniform(k3, (B, n_out))
        est = nd.EP(beta=BETA, variant="centered")
        relax, ours = ours_functions(est)
        _, ref = ours_functions(nd.RBP(adjoint=nd.adjoint.Krylov(rtol=1e-6)), rtol=1e-6, atol=1e-7)
        _, peer = peer_functions()

        @eqx.filter_jit
        def per_example(net, xs, ys):
            return jax.vmap(lambda x, y: nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=est))(xs, ys)

        (l_ours, g_ours, info), (l_peer, g_peer), (_, g_ref, _) = ours(net, xs, ys), peer(net, xs, ys), ref(net, xs, ys)
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
        t_relax, _ = time_fn(relax, net, xs)
        t_ours, _ = time_fn(ours, net, xs, ys)
        t_per, _ = time_fn(per_example, net, xs, ys)
        t_peer, _ = time_fn(peer, net, xs, ys, repeats=3)
        extra["ours_no_batch_mean_ms"] = 1e3 * t_per
        problem = f"Hopfield n={n} B={B} float32, centered EP beta={BETA}"
        rows.append(row("ep", problem, "nd.EP value_and_grad", "nd.relax alone", t_ours, t_relax, "<= 2.5x", **extra))
        rows.append(
            row(
                "ep",
                problem,
                "nd.EP value_and_grad",
                "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event)",
                t_ours,
                t_peer,
                "<= 0.7x",
                **extra,
            )
        )
        # The same gradient through jax.grad of the vmapped mean loss (the custom VJP).
        @eqx.filter_jit
        def through_grad(net, xs, ys):
            def mean_loss(net):
                per = jax.vmap(lambda x, y: nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=est)[0])(xs, ys)
                return jnp.mean(per)

            return eqx.filter_value_and_grad(mean_loss)(net)

        t_grad, _ = time_fn(through_grad, net, xs, ys)
        rows.append(row("ep", problem, "nd.EP, jax.grad of the vmapped mean loss", "nd.EP, batch mean of vmapped value_and_grad",
                        t_grad, t_ours, "1x (same numbers)", rel_diff=rel(through_grad(net, xs, ys)[1], g_ours)))
        # optimistix fixed_point on the Euler map + ImplicitAdjoint (matrix-free GMRES: a
        # dense LU per example at this size is the peer's default, and slower still).
        import lineax as lx

        _, opeer = optimistix_peer_functions(linear_solver=lx.GMRES(rtol=1e-5, atol=1e-6, restart=40))
        _, g_opt = opeer(net, xs, ys)
        t_opt, _ = time_fn(opeer, net, xs, ys, repeats=3)
        rows.append(row("ep", problem, "nd.EP value_and_grad", "optimistix fixed_point + ImplicitAdjoint (lineax GMRES)",
                        t_ours, t_opt, "faster", ours_rel_err=extra["ours_rel_err"], peer_rel_err=rel(g_opt, g_ref),
                        peer_cosine=_cosine(g_opt, g_ref)))
    return rows
