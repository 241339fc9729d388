"""BPTT on the batch path, `nd.batch_value_and_grad`:

- a trajectory (fixed-step Euler CTRNN) against `nd.rollout` alone and against diffrax's
  default adjoint (`RecursiveCheckpointAdjoint`) on the same problem, the gradient checked
  against a plain unrolled `lax.scan`;
- a steady state (the EP section's Hopfield network) against `nd.relax` alone and the
  diffrax `ImplicitAdjoint` peer (Tsit5 + PID + steady_state_event), checked against a
  tight Krylov-RBP reference.

Each problem also has a row against the old path (`nd.batch_mean` of the vmapped
`nd.value_and_grad`), one for `jax.grad` of the batch loss, and one against BPTT of that
problem written by hand for its network and loss (the floor, checked against `nd.BPTT`)."""

import diffrax
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
    check_peer_field,
    floor_row,
    ours_functions,
    peer_field,
    peer_functions,
    per_example_functions,
    rel,
    through_grad_function,
)
from ._timing import row, time_side_by_side
from .rbp import _hopfield_problem


def _problem(n, B, n_in=8, n_out=4, n_save=40, steps_per_save=10, dt=0.1, seed=0):
    key = jr.PRNGKey(seed)
    k1, k2, k3 = jr.split(key, 3)
    net = nd.networks.CTRNN(n, n_in, n_out, key=k1)
    x = jr.normal(k2, (B, n_in))
    T = n_save
    xs = jnp.repeat(x[:, None], T, axis=1)  # input held constant: both sides see the same field
    ys = jr.normal(k3, (B, T, n_out))
    ts = np.arange(1, T + 1) * steps_per_save * dt
    return net, xs, ys, ts, dt


def _diffrax_loss(net, x, y, ts, dt):
    field = peer_field(net)

    def vf(t, r, args):
        return field(t, r, x[0])

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Euler(),
        t0=0.0,
        t1=float(ts[-1]),
        dt0=dt,
        y0=net.init_state(x[0]),
        saveat=diffrax.SaveAt(ts=jnp.asarray(ts)),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=int(round(ts[-1] / dt)) + 8,
    )
    per = jax.vmap(lambda r, yk: nd.losses.squared_error(net.readout(r), yk))(sol.ys, y)
    return jnp.sum(per)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@eqx.filter_jit
def _scan_reference(net, xs, ys, n_save, steps_per_save, dt):
    def loss(net, x, y):
        def interval(r, yk):
            r = jax.lax.fori_loop(0, steps_per_save, lambda _, r: r + dt * net(0.0, r, x[0]), r)
            return r, nd.losses.squared_error(net.readout(r), yk)

        _, per = jax.lax.scan(interval, net.init_state(x[0]), y)
        return jnp.sum(per)

    return eqx.filter_grad(lambda n: jnp.mean(jax.vmap(lambda x, y: loss(n, x, y))(xs, ys)))(net)


def _hand_written_floor(n_save, steps_per_save, dt):
    """Full BPTT of exactly this problem written by hand for it: the floor of what a generic
    estimator could reach on this machine.

    Two passes and no generic machinery: the forward scan keeps each Euler step's state and
    `tanh` output; the reverse scan forms `g = dt a (1 - h^2)` and `a <- (1 - dt) a + g W`
    (one product per step, as the forward); then every weight gradient is one matrix product
    over all steps of all examples (`dW = G^T R`). It knows the network (a rate CTRNN with
    tanh, tau = 1, a linear readout) and the loss (the squared error at every save), which
    `nd.BPTT` cannot assume."""

    @jax.jit
    def grad(W, U, b, V, c, xs, ys):
        B = xs.shape[0]
        xs_t, ys_t = jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1)

        def interval(R, X):
            drive = X @ U.T + b

            def sub(R, _):
                h = jnp.tanh(R @ W.T + drive)
                return R + dt * (h - R), (R, h)

            R, (Rs, Hs) = jax.lax.scan(sub, R, None, length=steps_per_save)
            return R, (Rs, Hs, R)

        R0 = jnp.zeros((B, W.shape[0]), W.dtype)
        _, (Rs, Hs, R_end) = jax.lax.scan(interval, R0, xs_t[:n_save])
        E = (R_end @ V.T + c - ys_t) / B  # (T, B, n_out): d loss / d readout

        def back_interval(a, inp):
            H_k, E_k = inp
            a = a + E_k @ V

            def back(a, h):
                g = dt * a * (1 - h * h)
                return (1 - dt) * a + g @ W, g

            return jax.lax.scan(back, a, H_k, reverse=True)

        _, G = jax.lax.scan(back_interval, R0, (Hs, E), reverse=True)
        G_rows, R_rows = G.reshape(-1, G.shape[-1]), Rs.reshape(-1, Rs.shape[-1])
        G_k = jnp.sum(G, axis=1)  # (T, B, n): the drive's cotangent per interval
        return dict(
            W=G_rows.T @ R_rows,
            U=jnp.einsum("tbi,tbj->ij", G_k, xs_t[:n_save]),
            b=jnp.sum(G_k, axis=(0, 1)),
            V=jnp.einsum("tbo,tbi->oi", E, R_end),
            c=jnp.sum(E, axis=(0, 1)),
        )

    return grad


def _hand_written_steady_floor(net, rtol, atol, K, dt=1.0):
    """Full BPTT of the relaxation of exactly this problem written by hand for it: the
    floor of what a generic estimator could reach on this machine.

    It knows the network (a dense `nd.networks.Hopfield` with logistic units: `F = -r +
    rho'(r) z`, `z = rho(r) W_s + U x + b`) and the loss (the squared error of the output
    units), which `nd.BPTT` cannot assume, and the number of steps the slowest example
    takes (`K`, a static length). Forward: `K` Euler steps of the whole batch as one scan,
    each row stopping at its own first step within tolerance (the test `nd.BPTT`'s stored
    path makes every step), keeping `r` and `z`. Backward: the transposed steps by hand,
    `a <- a + dt (-a + rho'' z a + rho' ((rho' a) W_s))`, one product per step as the
    forward; then each weight gradient is one matrix product over all steps of all rows."""
    n, n_hidden = net.n_state, net.n_hidden
    mask = 1 - jnp.eye(n, dtype=net.W.dtype)

    def rms(A):
        return jnp.sqrt(jnp.mean(A * A, axis=-1))

    @jax.jit
    def grad(W, U, b, xs, ys):
        B = xs.shape[0]
        W_s = 0.5 * (W + W.T) * mask
        C = xs @ U.T + b

        def fwd(carry, _):
            R, live = carry
            s = jax.nn.sigmoid(R)
            z = s @ W_s + C
            R1 = R + dt * (-R + s * (1 - s) * z)
            done = rms(R1 - R) / dt <= atol + rtol * rms(R1)
            return (jnp.where(live[:, None], R1, R), live & ~done), (R, z, live)

        R0 = jnp.zeros((B, n), W.dtype)
        (R, _), (Rs, Zs, Ls) = jax.lax.scan(fwd, (R0, jnp.ones((B,), bool)), None, length=K)
        E = R[:, n_hidden:] - ys
        loss = 0.5 * jnp.sum(E * E) / B
        A = jnp.zeros_like(R).at[:, n_hidden:].set(E / B)

        def back(A, inp):
            R, z, live = inp
            s = jax.nn.sigmoid(R)
            d1 = s * (1 - s)
            d2 = d1 * (1 - 2 * s)
            G = jnp.where(live[:, None], dt * d1 * A, 0.0)  # the drive's cotangent
            A1 = A + dt * (-A + d2 * z * A) + d1 * (G @ W_s)
            return jnp.where(live[:, None], A1, A), G

        _, Gs = jax.lax.scan(back, A, (Rs, Zs, Ls), reverse=True)
        S_rows = jax.nn.sigmoid(Rs).reshape(-1, n)
        G_rows = Gs.reshape(-1, n)
        G_s = S_rows.T @ G_rows  # d loss / d W_s (rows: rho, columns: the drive's cotangent)
        G_c = jnp.sum(Gs, axis=0)  # (B, n)
        return loss, dict(W=0.5 * (G_s + G_s.T) * mask, U=G_c.T @ xs, b=jnp.sum(G_c, axis=0))

    return grad


def _trajectory(n, B, repeats, lean=False):
    """BPTT of a trajectory against the forward rollout and diffrax; with `lean` (the GPU
    table) only those three and the peer's forward, and a disagreement with the reference is
    recorded in the rows rather than raised (a device run must come back with its table)."""
    net, xs, ys, ts, dt = _problem(n, B)
    obj = nd.Trajectory(nd.losses.squared_error, ts)
    opts = dict(solver=diffrax.Euler(), dt0=dt)
    est = nd.BPTT()

    @eqx.filter_jit
    def forward(net, xs):
        return jax.vmap(lambda x: nd.rollout(net, x, ts, **opts)[0])(xs)

    @eqx.filter_jit
    def ours(net, xs, ys):
        return nd.batch_value_and_grad(net, xs, ys, objective=obj, estimator=est, **opts)

    @eqx.filter_jit
    def peer_forward(net, xs, ys):
        return jnp.mean(jax.vmap(lambda x, y: _diffrax_loss(net, x, y, ts, dt))(xs, ys))

    @eqx.filter_jit
    def peer(net, xs, ys):
        return eqx.filter_value_and_grad(peer_forward)(net, xs, ys)

    # Same problem: both gradients are checked against a plain unrolled lax.scan.
    check_peer_field(net, xs[0, 0])
    (_, g_ours, _), (_, g_peer) = ours(net, xs, ys), peer(net, xs, ys)
    g_ref = _scan_reference(net, xs, ys, len(ts), int(round(ts[0] / dt)), dt)
    err = _rel(g_ours.W, g_ref.W)
    peer_err = _rel(g_peer.W, g_ref.W)
    if not err < 1e-3 and not lean:
        raise AssertionError(f"nd.BPTT disagrees with the lax.scan reference (rel err {err:.2e})")
    steps = int(round(ts[-1] / dt))
    problem = f"CTRNN n={n} B={B}, Euler {steps} steps, {len(ts)} saves"
    label = "nd.BPTT batch_value_and_grad"
    calls = [(ours, net, xs, ys), (forward, net, xs), (peer_forward, net, xs, ys), (peer, net, xs, ys)]
    if not lean:
        hand = _hand_written_floor(len(ts), int(round(ts[0] / dt)), dt)
        hand_args = (net.W, net.U, net.b, net.V, net.c, xs, ys)
        g_hand = hand(*hand_args)
        hand_err = max(_rel(g_hand[k], getattr(g_ref, k)) for k in g_hand)
        if not hand_err < 1e-3:
            raise AssertionError(f"the hand-written floor disagrees with the lax.scan reference ({hand_err:.2e})")
        old, through = per_example_functions(est, obj, **opts), through_grad_function(est, obj, **opts)
        d_old, d_through = check_batch_path("bptt", net, xs, ys, ours, old, through)
        calls += [(hand, *hand_args), (old, net, xs, ys), (through, net, xs, ys)]
    t_ours, t_fwd, t_peer_fwd, t_peer, *t_rest = time_side_by_side(calls, repeats=repeats)
    rows = [
        row("bptt", problem, label, "nd.rollout (forward only)", t_ours, t_fwd, "<= 3x", grad_rel_err=err),
        row(
            "bptt",
            problem,
            label,
            "diffrax RecursiveCheckpointAdjoint grad",
            t_ours,
            t_peer,
            "<= 0.5x",
            grad_rel_err=err,
            peer_grad_rel_err=peer_err,
            peer_forward_ms=1e3 * t_peer_fwd,
        ),
    ]
    if lean:
        return rows
    t_hand, t_old, t_through = t_rest
    # The floor: what the targets above ask of a generic estimator, against what code written
    # for this one network and loss reaches on the same machine.
    rows.append(
        row(
            "bptt",
            problem,
            label,
            "hand-written BPTT of this network (the floor)",
            t_ours,
            t_hand,
            "context",
            grad_rel_err=err,
            floor_rel_err=hand_err,
            floor_vs_rollout=t_hand / t_fwd,
            floor_vs_diffrax=t_hand / t_peer,
        )
    )
    rows += batch_path_rows("bptt", problem, "nd.BPTT", t_ours, t_old, t_through, d_old, d_through)
    return rows


def _steady(n, B, repeats):
    """Full BPTT of the relaxation (the stored-states path of the batch) on the EP section's
    Hopfield network."""
    net, xs, ys = _hopfield_problem(n, B)
    est = nd.BPTT()
    relax, ours = ours_functions(est)
    _, ref = ours_functions(nd.RBP(adjoint=nd.adjoint.JaxGMRES(rtol=1e-6)), rtol=1e-6, atol=1e-7)
    _, peer = peer_functions()
    (l_ours, g_ours, info), (_, g_ref, _), (_, g_peer) = ours(net, xs, ys), ref(net, xs, ys), peer(net, xs, ys)
    assert bool(jnp.all(info["converged"])), "BPTT's relaxation did not converge on the benchmark problem"
    steps = int(jnp.max(info["steps"]))
    extra = dict(
        ours_rel_err=rel(g_ours, g_ref),
        peer_rel_err=rel(g_peer, g_ref),
        fwd_steps=steps,
        stored_steps=est.stored_steps,
        stored_path=steps <= est.stored_steps,
    )
    old, through = per_example_functions(est), through_grad_function(est)
    d_old, d_through = check_batch_path("bptt", net, xs, ys, ours, old, through)
    opts = nd.SteadyState().options(xs.dtype)
    hand = _hand_written_steady_floor(net, opts.rtol, opts.atol, steps, opts.dt0)
    l_hand, g_hand = hand(net.W, net.U, net.b, xs, ys)
    hand_err, hand_gap = check_floor("BPTT", g_hand, g_ref, g_ours, l_hand, l_ours)
    t_ours, t_through, t_relax, t_old, t_peer, t_hand = time_side_by_side(
        [
            (ours, net, xs, ys),
            (through, net, xs, ys),
            (relax, net, xs),
            (old, net, xs, ys),
            (peer, net, xs, ys),
            (hand, net.W, net.U, net.b, xs, ys),
        ],
        repeats=repeats,
    )
    problem = f"Hopfield n={n} B={B} float32, steady state (BPTT of the relaxation)"
    label = "nd.BPTT batch_value_and_grad"
    rows = [
        row("bptt", problem, label, "nd.relax alone", t_ours, t_relax, "<= 3x", **extra),
        row(
            "bptt",
            problem,
            label,
            "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event)",
            t_ours,
            t_peer,
            "faster",
            **extra,
        ),
    ]
    rows += batch_path_rows("bptt", problem, "nd.BPTT", t_ours, t_old, t_through, d_old, d_through)
    rows.append(floor_row("bptt", problem, label, "BPTT", t_ours, t_hand, t_relax, hand_err, hand_gap))
    return rows


def _long_steady(n, B, repeats, dt0s=(0.35, 0.05)):
    """BPTT of longer relaxations of the same problem (smaller steps `dt0`): one that
    outgrows the first stored buffers and goes on in larger ones, and one past
    `stored_steps` (the backward pass relaxes each segment again). Against `nd.relax` with
    the same options and against the old path (the vmapped one-example checkpointed loop),
    whose gradient it must equal."""
    net, xs, ys = _hopfield_problem(n, B)
    est = nd.BPTT()
    label = "nd.BPTT batch_value_and_grad"
    rows = []
    for dt0 in dt0s:
        relax, ours = ours_functions(est, dt0=dt0)
        old = per_example_functions(est, dt0=dt0)
        (_, g_ours, info), (_, g_old, info_old) = ours(net, xs, ys), old(net, xs, ys)
        assert bool(jnp.all(info["converged"])), f"BPTT's relaxation did not converge at dt0={dt0}"
        steps = int(jnp.max(info["steps"]))
        d_old = rel(g_ours, g_old)
        assert d_old < 1e-3 and bool(jnp.all(info["steps"] == info_old["steps"])), (
            f"bptt: the batch path and the one-example loop disagree at dt0={dt0} ({d_old:.2e})"
        )
        t_ours, t_relax, t_old = time_side_by_side([(ours, net, xs, ys), (relax, net, xs), (old, net, xs, ys)], repeats)
        path = "stored" if steps <= est.stored_steps else f"in segments of {est.stored_steps}"
        problem = f"Hopfield n={n} B={B} float32, steady state, dt0={dt0}: {steps} steps ({path})"
        extra = dict(fwd_steps=steps, stored_steps=est.stored_steps, rel_diff=d_old)
        rows.append(row("bptt", problem, label, "nd.relax alone (same dt0)", t_ours, t_relax, "context", **extra))
        rows.append(
            row("bptt", problem, label, "old path (vmapped checkpointed loop)", t_ours, t_old, "speed-up", **extra)
        )
    return rows


LARGE_SIZES = [(256, 256), (1024, 256), (4096, 256)]


def run(quick: bool = False, large: bool = False):
    sizes = [(64, 16)] if quick else (LARGE_SIZES if large else [(64, 32), (256, 32)])
    repeats = 3 if quick else (5 if large else 9)
    rows = []
    for n, B in sizes:
        rows += _trajectory(n, B, repeats, lean=large)
    if large:
        from ._gpu import steady_rows

        return rows + steady_rows(
            "bptt",
            nd.BPTT(),
            "nd.BPTT batch_value_and_grad",
            "Hopfield",
            LARGE_SIZES,
            lambda n: ("<= 3x", "faster"),
            what=", steady state (BPTT of the relaxation)",
        )
    steady = (64, 8) if quick else (256, 32)
    rows += _steady(*steady, 3 if quick else 15)
    rows += _long_steady(*steady, 2 if quick else 5)
    return rows
