"""Centered EP against `nd.relax` alone and the diffrax `ImplicitAdjoint` and optimistix
peers, on one Hopfield network and batch (float32), timed side by side after checking that
the gradients (ours, the peers', a tight Krylov-RBP reference) solve the same problem.

Ours is the batch path, `nd.batch_value_and_grad` (the three relaxations per example, then
one reverse pass of the nudged energies over the batch). Two more rows: the batch path
against the old one (`nd.batch_mean` of the vmapped `nd.value_and_grad`), and `jax.grad`
of the batch loss against the returned `grads`. One more: a centered EP written by hand for
this network and loss (`_hand_written_floor`, checked against `nd.EP` and the reference),
the floor a generic estimator could reach here.

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
    check_floor,
    floor_row,
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


def _hand_written_floor(net, rtol, atol, max_steps, dt=1.0, check_every=2):
    """Centered EP of exactly this problem written by hand for it: the floor of what a
    generic estimator could reach on this machine.

    It knows the network (a dense `nd.networks.Hopfield`: `F = -r + rho'(r) (W_s rho(r) + U x
    + b)`, the readout the output units) and the loss (the squared error), which `nd.EP`
    cannot assume. Three relaxations as whole-batch loops with no per-example bookkeeping:
    every row steps until all rows pass the same test as `nd.relax` (the step difference
    against `atol + rtol rms(r)`, tested every `check_every` steps), and nothing is
    reported; the two nudged phases as one loop over `2B` rows; then each weight gradient is
    one matrix product, `dE/dW_s = -rho rho^T / 2` summed with the phases' weights."""
    act, n_hidden, n = net.activation, net.n_hidden, net.n_state
    mask = 1 - jnp.eye(n, dtype=net.W.dtype)

    def rms(A):
        return jnp.sqrt(jnp.mean(A * A, axis=-1))

    def relax(R, W_s, C, pull):
        # `pull(R)`: the nudge's extra drift (zero for the free phase).
        def field(R):
            rho, drho = jax.jvp(act, (R,), (jnp.ones_like(R),))
            return -R + drho * (rho @ W_s + C) + pull(R)

        def body(c):
            R, k, _ = c
            for _ in range(check_every - 1):
                R = R + dt * field(R)
            R1 = R + dt * field(R)
            done = jnp.all(rms(R1 - R) / dt <= atol + rtol * rms(R1))
            return R1, k + check_every, done

        R, _, _ = jax.lax.while_loop(lambda c: (c[1] < max_steps) & ~c[2], body, (R, 0, False))
        return R

    @jax.jit
    def grad(W, U, b, xs, ys, beta):
        B = xs.shape[0]
        W_s = 0.5 * (W + W.T) * mask
        C = xs @ U.T + b
        R = relax(jnp.zeros((B, n), W.dtype), W_s, C, lambda R: 0.0)
        loss = 0.5 * jnp.sum((R[:, n_hidden:] - ys) ** 2) / B
        # Both nudged phases as one loop: rows 0..B-1 at +beta, B..2B-1 at -beta.
        sign = jnp.concatenate([jnp.ones((B, 1)), -jnp.ones((B, 1))]).astype(W.dtype)
        Y2 = jnp.concatenate([ys, ys])

        def pull(R):
            return jnp.zeros_like(R).at[:, n_hidden:].set(-beta * sign * (R[:, n_hidden:] - Y2))

        R2 = relax(jnp.concatenate([R, R]), W_s, jnp.concatenate([C, C]), pull)
        rho = act(R2)
        rp, rm = rho[:B], rho[B:]
        scale = 1 / (2 * beta * B)
        G_s = -0.5 * scale * (rp.T @ rp - rm.T @ rm)  # d/dW_s of the phases' energy difference
        d = rp - rm
        return loss, dict(W=G_s * mask, U=-scale * (d.T @ xs), b=-scale * jnp.sum(d, axis=0))

    return grad


LARGE_SIZES = [(256, 256), (1024, 256), (4096, 256)]


def run(quick: bool = False, large: bool = False):
    if large:
        # The GPU table: lean (ours, nd.relax, the diffrax peer), default precision.
        from ._gpu import steady_rows

        est = nd.EP(beta=BETA, variant="centered")
        label = "nd.EP batch_value_and_grad"
        return steady_rows(
            "ep",
            est,
            label,
            "Hopfield",
            LARGE_SIZES,
            lambda n: ("<= 2.5x", "<= 0.5x"),
            what=f", centered EP beta={BETA}",
        )
    rows = []
    sizes = [(64, 8)] if quick else [(256, 32)]
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
        opts = nd.SteadyState().options(xs.dtype)
        hand = _hand_written_floor(net, opts.rtol, opts.atol, opts.max_steps)
        hand_args = (net.W, net.U, net.b, xs, ys, jnp.asarray(BETA, xs.dtype))
        l_hand, g_hand = hand(*hand_args)
        hand_err, hand_gap = check_floor("EP", g_hand, g_ref, g_ours, l_hand, l_ours)
        t_ours, t_through, t_relax, t_old, t_peer, t_opt, t_hand = time_side_by_side(
            [
                (ours, net, xs, ys),
                (through, net, xs, ys),
                (relax, net, xs),
                (old, net, xs, ys),
                (peer, net, xs, ys),
                (opeer, net, xs, ys),
                (hand, *hand_args),
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
        rows.append(floor_row("ep", problem, label, "EP", t_ours, t_hand, t_relax, hand_err, hand_gap))
        rows += batch_path_rows("ep", problem, "nd.EP", t_ours, t_old, t_through, d_old, d_through)
    return rows
