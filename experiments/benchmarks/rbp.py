"""RBP: against `nd.relax` alone and against diffrax `ImplicitAdjoint` (Tsit5 + PID +
steady_state_event) on the same network, at measured accuracy; the relaxation and adjoint
strategies side by side (how the defaults were picked); a scaling table n = 64 ... 1024
(4096 with `large`); and peak memory against the number of relaxation steps.

The headline problems (a CTRNN and a Hopfield network, n = 256, B = 32 on the CPU) run on
the batch path, `nd.batch_value_and_grad` (states per example, one reverse pass whose
weight gradients are matrix products over the batch); each also has a row against the old
path (`nd.batch_mean` of the vmapped `nd.value_and_grad`) and one for `jax.grad` of the
batch loss, and one against RBP written by hand for that network and loss
(`_hand_written_floor`, checked against `nd.RBP` and the reference): the floor a generic
estimator could reach on the machine. The strategy, scaling and memory tables run on the
batch path too.

Every gradient error is relative to a float64 reference (tight relaxation, dense LU where
n <= 256, the adjoint ODE to 1e-11 above), computed on the per-example path.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import neurodyn as nd
from neurodyn._misc import tree_cast

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
from ._timing import peak_bytes, row, time_fn, time_side_by_side


def _problem(n, B, seed=0, dtype=jnp.float32, gain=0.5):
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = tree_cast(nd.networks.CTRNN(n, 16, 8, gain=gain, key=k1), dtype)
    return net, jr.normal(k2, (B, 16), dtype), jr.normal(k3, (B, 8), dtype)


def _hopfield_problem(n, B, seed=0, n_in=64, n_out=10):
    """The EP section's Hopfield network and data (n state units: n - n_out hidden)."""
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = nd.networks.Hopfield(n_in, n - n_out, n_out, key=k1)
    return net, jr.uniform(k2, (B, n_in)), jr.uniform(k3, (B, n_out))


def _relax_fn(**options):
    @eqx.filter_jit
    def relax(net, xs):
        return jax.vmap(lambda x: nd.relax(net, x, **options))(xs)

    return relax


def _rbp_fn(estimator=None, batch=True, **options):
    """RBP's `(loss, grads, info)` of a batch: `nd.batch_value_and_grad` (the batch path,
    default) or, with `batch=False`, the batch mean of the vmapped `nd.value_and_grad`."""
    estimator = nd.RBP() if estimator is None else estimator
    if batch:
        return ours_functions(estimator, **options)[1]
    return per_example_functions(estimator, **options)


def _reference(net, xs, ys):
    """A float64 gradient: tight relaxation, then a dense LU (n <= 256) or the adjoint ODE,
    on the per-example path (independent of the batch path it checks)."""
    with jax.enable_x64(True):
        net64 = tree_cast(net, jnp.float64)
        xs64, ys64 = xs.astype(jnp.float64), ys.astype(jnp.float64)
        adj = nd.adjoint.DenseLU() if net.n_state <= 256 else nd.adjoint.AdjointODE(rtol=1e-11)
        _, g, info = _rbp_fn(nd.RBP(adjoint=adj), batch=False, rtol=1e-12, atol=1e-14, max_steps=100_000)(
            net64, xs64, ys64
        )
        assert bool(jnp.all(info["converged"])), "the float64 reference did not converge"
        return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), g)


def _hand_written_floor(kind, net, rtol=1e-5, atol=1e-6, max_steps=10_000, check_every=2):
    """RBP of exactly this problem written by hand for it: the floor of what a generic
    estimator could reach on this machine (as the EP section's).

    It knows the network (the rate CTRNN `F = -r + tanh(W r + U x + b)` with its linear
    readout, or the dense Hopfield `F = -r + rho'(r) (W_s rho(r) + U x + b)` read at its
    output units) and the loss (the squared error), which `nd.RBP` cannot assume. The same
    two loops as `nd.RBP()`'s defaults, Euler with `dt0 = 1` and a test every `check_every`
    steps, as whole-batch loops with no per-example bookkeeping (every row steps until all
    rows pass the test) and nothing reported: the relaxation (step difference against
    `atol + rtol rms(r)`), then the adjoint `v <- v + (J^T v + g)` from `v = g` (against
    `rtol (rms(g) + rms(v)) + atol`), then each weight gradient one matrix product."""

    def rms(A):
        return jnp.sqrt(jnp.mean(A * A, axis=-1, keepdims=True))

    def loop(step, test, X):
        def body(c):
            X, k, _ = c
            for _ in range(check_every - 1):
                X = step(X)
            X1 = step(X)
            return X1, k + check_every, jnp.all(rms(X1 - X) <= test(X1))

        return jax.lax.while_loop(lambda c: (c[1] < max_steps) & ~c[2], body, (X, 0, False))[0]

    if kind == "CTRNN":

        @jax.jit
        def grad(W, U, b, V, c, xs, ys):
            B, n = xs.shape[0], W.shape[0]
            C = xs @ U.T + b
            R = loop(lambda R: jnp.tanh(R @ W.T + C), lambda R: atol + rtol * rms(R), jnp.zeros((B, n), W.dtype))
            D = 1 - jnp.tanh(R @ W.T + C) ** 2
            E = R @ V.T + c - ys  # each example's d loss / d readout
            g = E @ V  # unscaled, as nd.RBP's per-example adjoint (the same test)
            v = loop(lambda v: (D * v) @ W + g, lambda v: rtol * (rms(g) + rms(v)) + atol, g)
            S, E = D * v / B, E / B  # the pre-activation's cotangent, the batch mean's weights
            return dict(W=S.T @ R, U=S.T @ xs, b=jnp.sum(S, 0), V=E.T @ R, c=jnp.sum(E, 0))

        return grad

    act, n_hidden, n = net.activation, net.n_hidden, net.n_state
    mask = 1 - jnp.eye(n, dtype=net.W.dtype)

    @jax.jit
    def grad(W, U, b, xs, ys):
        B = xs.shape[0]
        W_s = 0.5 * (W + W.T) * mask
        C = xs @ U.T + b

        def field(R):
            rho, drho = jax.jvp(act, (R,), (jnp.ones_like(R),))
            return -R + drho * (rho @ W_s + C)

        R = loop(lambda R: R + field(R), lambda R: atol + rtol * rms(R), jnp.zeros((B, n), W.dtype))
        g = jnp.zeros_like(R).at[:, n_hidden:].set(R[:, n_hidden:] - ys)  # per example, unscaled
        _, vjp = jax.vjp(field, R)  # J^T v, W_s symmetric
        v = loop(lambda v: v + vjp(v)[0] + g, lambda v: rtol * (rms(g) + rms(v)) + atol, g)
        rho, drho = jax.jvp(act, (R,), (jnp.ones_like(R),))
        S = drho * v / B  # d (v . F) / d (W_s rho + C), the batch mean's weights
        G = S.T @ rho
        return dict(W=0.5 * (G + G.T) * mask, U=S.T @ xs, b=jnp.sum(S, 0))

    return grad


def _steps(info, key):
    return int(jnp.max(info[key]))


def _head(kind, n, B, large, repeats):
    rows = []
    if kind == "CTRNN":
        net, xs, ys = _problem(n, B)
        problem = f"CTRNN n={n} B={B} float32, steady state"
    else:
        net, xs, ys = _hopfield_problem(n, B)
        problem = f"Hopfield n={n} B={B} float32, steady state"
    relax, ours, old, through = _relax_fn(), _rbp_fn(), _rbp_fn(batch=False), through_grad_function(nd.RBP())
    _, peer = peer_functions()
    (_, g_ours, info), (_, g_peer) = ours(net, xs, ys), peer(net, xs, ys)
    assert bool(jnp.all(info["converged"])), f"RBP did not converge on the {kind} benchmark problem"
    g_ref = _reference(net, xs, ys)
    e_ours, e_peer = rel(g_ours, g_ref), rel(g_peer, g_ref)
    d_old, d_through = check_batch_path("rbp", net, xs, ys, ours, old, through)
    # optimistix: the same Euler fixed-point iteration, its default (dense LU) adjoint and GMRES.
    import lineax as lx

    peers = [("optimistix fixed_point + ImplicitAdjoint (dense LU)", None)]
    peers += [("optimistix fixed_point + ImplicitAdjoint (lineax GMRES)", lx.GMRES(rtol=1e-5, atol=1e-6, restart=40))]
    if large:
        peers = peers[1:]  # a batched dense n x n LU per example: B n^2 floats, minutes to compile
    opeers = [optimistix_peer_functions(linear_solver=solver)[1] for _, solver in peers]
    e_opt = [rel(opeer(net, xs, ys)[1], g_ref) for opeer in opeers]
    # The floor: the same two loops written by hand for this network and loss, checked
    # against nd.RBP (same iterates: to rounding) and the float64 reference.
    hand = _hand_written_floor(kind, net)
    hand_args = (net.W, net.U, net.b, xs, ys) if kind == "Hopfield" else (net.W, net.U, net.b, net.V, net.c, xs, ys)
    g_hand = hand(*hand_args)
    hand_err, hand_gap = check_floor("RBP", g_hand, g_ref, g_ours)
    t_ours, t_through, t_relax, t_old, t_peer, t_hand, *t_opt = time_side_by_side(
        [
            (ours, net, xs, ys),
            (through, net, xs, ys),
            (relax, net, xs),
            (old, net, xs, ys),
            (peer, net, xs, ys),
            (hand, *hand_args),
        ]
        + [(opeer, net, xs, ys) for opeer in opeers],
        repeats=repeats,
    )
    extra = dict(
        ours_rel_err=e_ours,
        peer_rel_err=e_peer,
        fwd_steps=_steps(info, "steps"),
        adjoint_steps=_steps(info, "adjoint_steps"),
        converged=bool(jnp.all(info["converged"])),
    )
    label = "nd.RBP batch_value_and_grad"
    rows.append(row("rbp", problem, label, "nd.relax alone", t_ours, t_relax, "<= 2x", **extra))
    rows.append(
        row(
            "rbp",
            problem,
            label,
            "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event)",
            t_ours,
            t_peer,
            "<= 0.05x (20x faster)" if large else "<= 0.2x",
            **extra,
        )
    )
    rows.append(floor_row("rbp", problem, label, "RBP", t_ours, t_hand, t_relax, hand_err, hand_gap))
    rows += batch_path_rows("rbp", problem, "nd.RBP", t_ours, t_old, t_through, d_old, d_through)
    for (plabel, _), t, e in zip(peers, t_opt, e_opt):
        rows.append(row("rbp", problem, label, plabel, t_ours, t, "faster", ours_rel_err=e_ours, peer_rel_err=e))
    return rows


def _relaxations(n, B, dtype, repeats, quick=False, gain=0.5):
    """The forward relaxation strategies, timed against the default (the first row)."""
    rows = []
    net, xs, _ = _problem(n, B, dtype=dtype, gain=gain)
    name = jnp.dtype(dtype).name + ("" if gain == 0.5 else f" gain={gain}")
    candidates = [
        ("FixedStep()", nd.relaxation.FixedStep()),
        ("FixedStep(check_every=2)", nd.relaxation.FixedStep(check_every=2)),
        ("Anderson(m=3)", nd.relaxation.Anderson(m=3)),
        ("Anderson(m=5)", nd.relaxation.Anderson(m=5)),
        ("Backoff()", nd.relaxation.Backoff()),
    ]
    settings = [(label, rel, dt0) for dt0 in (1.0, 0.5) for label, rel in candidates]
    # Newton ignores dt0: one row.
    settings.insert(len(candidates), ("NewtonKrylov()", nd.relaxation.NewtonKrylov(), 1.0))
    if quick:
        settings = [settings[0], settings[2], settings[len(candidates)]]
    fns = [_relax_fn(relaxation=relaxation, dt0=dt0) for _, relaxation, dt0 in settings]
    infos = [f(net, xs)[1] for f in fns]
    times = time_side_by_side([(f, net, xs) for f in fns], repeats=repeats)
    t_base = times[0]
    for (label, _, dt0), info, t in zip(settings, infos, times):
        rows.append(
            row(
                "rbp-relaxation",
                f"CTRNN n={n} B={B} {name}, nd.relax",
                f"{label} dt0={dt0}",
                "FixedStep() dt0=1 (first row)",
                t,
                t_base,
                "pick the fastest",
                fwd_steps=_steps(info, "steps"),
                converged=bool(jnp.all(info["converged"])),
            )
        )
    return rows


def _tolerances(dtype):
    return (1e-10, 1e-12) if jnp.dtype(dtype) == jnp.float64 else (1e-5, 1e-6)


def _lx_gmres(dtype, restart):
    import lineax as lx

    rtol, atol = _tolerances(dtype)
    return lx.GMRES(rtol=rtol, atol=atol, max_steps=500, restart=restart)


def _lx_bicgstab(dtype):
    import lineax as lx

    rtol, atol = _tolerances(dtype)
    return lx.BiCGStab(rtol=rtol, atol=atol, max_steps=500)


def _adjoints(n, B, dtype, repeats, quick=False):
    """The adjoint strategies inside nd.RBP, timed against the default (the first row)."""
    rows = []
    net, xs, ys = _problem(n, B, dtype=dtype)
    name = jnp.dtype(dtype).name
    g_ref = _reference(net, xs, ys)
    candidates = [
        ("AdjointODE()", nd.adjoint.AdjointODE()),
        ("Neumann(K=10)", nd.adjoint.Neumann(K=10)),
        ("Neumann(K=20)", nd.adjoint.Neumann(K=20)),
        ("Linear() (lineax GMRES, restart=40)", nd.adjoint.Linear()),
        ("Linear(lx.GMRES(restart=5))", nd.adjoint.Linear(_lx_gmres(dtype, restart=5))),
        (
            "Linear(lx.BiCGStab, fallback GMRES)",
            nd.adjoint.Linear(_lx_bicgstab(dtype), fallback=_lx_gmres(dtype, restart=40)),
        ),
        ("JaxBiCGStab()", nd.adjoint.JaxBiCGStab()),
        ("JaxGMRES(restart=10)", nd.adjoint.JaxGMRES(restart=10)),
        ("DenseLU()", nd.adjoint.DenseLU()),
    ]
    if quick:
        candidates = [candidates[0], candidates[3], candidates[6]]
    if n > 256:
        # A batched dense LU and GMRES(40) at n = 1024, B = 256 compile for minutes.
        candidates = [c for c in candidates if c[0] not in ("DenseLU()", "Linear() (lineax GMRES, restart=40)")]
    fns = [_rbp_fn(nd.RBP(adjoint=adj)) for _, adj in candidates]
    outs = [f(net, xs, ys) for f in fns]
    times = time_side_by_side([(f, net, xs, ys) for f in fns], repeats=repeats)
    t_base = times[0]
    for (label, _), (_, g, info), t in zip(candidates, outs, times):
        rows.append(
            row(
                "rbp-adjoint",
                f"CTRNN n={n} B={B} {name}, RBP batch_value_and_grad",
                label,
                "AdjointODE() (default)",
                t,
                t_base,
                "accurate and fastest",
                rel_err=rel(g, g_ref),
                adjoint_steps=_steps(info, "adjoint_steps"),
                adjoint_converged=bool(jnp.all(info["adjoint_converged"])),
            )
        )
    return rows


def _scaling(sizes, B, repeats):
    rows = []
    for n in sizes:
        net, xs, ys = _problem(n, B)
        relax, ours = _relax_fn(), _rbp_fn()
        _, _, info = ours(net, xs, ys)
        t, t_r = time_side_by_side([(ours, net, xs, ys), (relax, net, xs)], repeats=repeats)
        rows.append(
            row(
                "rbp-scaling",
                f"CTRNN n={n} B={B} float32",
                "nd.RBP batch_value_and_grad",
                "nd.relax alone",
                t,
                t_r,
                "memory O(n^2 + B n): the weights and the batch's states",
                peak_bytes=peak_bytes(ours, net, xs, ys),
                relax_peak_bytes=peak_bytes(relax, net, xs),
                fwd_steps=_steps(info, "steps"),
                adjoint_steps=_steps(info, "adjoint_steps"),
            )
        )
    return rows


def _memory_vs_steps(n, B, quick=False):
    """Peak memory at 4 step counts (the forward and adjoint tolerances tightened together):
    RBP keeps no trajectory, so the peak must not change."""
    rows = []
    net, xs, ys = _problem(n, B)
    settings = [(1e-2, 1.0), (1e-5, 1.0), (1e-5, 0.25), (1e-5, 0.05)]
    for rtol, dt0 in settings[1::2] if quick else settings:
        est = nd.RBP(adjoint=nd.adjoint.AdjointODE(rtol=max(rtol, 1e-5)))
        f = _rbp_fn(est, rtol=rtol, atol=0.1 * rtol, dt0=dt0, max_steps=100_000)
        _, _, info = f(net, xs, ys)
        t, _ = time_fn(f, net, xs, ys, repeats=3)
        rows.append(
            row(
                "rbp-memory",
                f"CTRNN n={n} B={B} float32, rtol={rtol:g} dt0={dt0:g}",
                "nd.RBP batch_value_and_grad",
                "-",
                t,
                t,
                "peak_bytes constant in steps",
                peak_bytes=peak_bytes(f, net, xs, ys),
                fwd_steps=_steps(info, "steps"),
                adjoint_steps=_steps(info, "adjoint_steps"),
            )
        )
    return rows


LARGE_SIZES = [(256, 256), (1024, 256), (4096, 256)]


def run(quick: bool = False, large: bool = False):
    if large:
        # The GPU table: lean (ours, nd.relax, the diffrax peer), with the default settings:
        # the default tolerances sit above TF32's rounding, so no precision override.
        from ._gpu import steady_rows

        def targets(n):
            return "<= 2x", "<= 0.05x (20x faster)" if n == 1024 else "<= 0.2x"

        rows = []
        for kind in ("CTRNN", "Hopfield"):
            rows += steady_rows(
                "rbp", nd.RBP(), "nd.RBP batch_value_and_grad", kind, LARGE_SIZES, targets, what=", steady state"
            )
        return rows
    return _run(quick, large)


def _run(quick, large):
    repeats = 3 if quick else 9
    rows = []
    head = (64, 8) if quick else ((1024, 256) if large else (256, 32))
    # The headline problems: more interleaved rounds (the machine may be shared).
    rows += _head("CTRNN", *head, large, 3 if quick else 15)
    rows += _head("Hopfield", *head, large, 3 if quick else 15)
    rows += _relaxations(*head, jnp.float32, repeats, quick)
    if not quick:
        # Near the edge of stability the fixed-step iteration slows down: where Newton pays.
        rows += _relaxations(*head, jnp.float32, repeats, gain=0.95)
    rows += _adjoints(*head, jnp.float32, repeats, quick)
    if not quick:
        with jax.enable_x64(True):
            # float64, small: tight tolerances, where the iteration counts differ most.
            rows += _relaxations(32, 8, jnp.float64, repeats)
            rows += _adjoints(32, 8, jnp.float64, repeats)
    sizes = [64] if quick else ([1024, 2048, 4096] if large else [64, 128, 256, 512, 1024])
    # B = 64 on the GPU: per-example weight gradients are B n^2 floats (4.3 GB at n = 4096).
    rows += _scaling(sizes, 64 if large else 8, 3 if quick else 5)
    rows += _memory_vs_steps(64 if quick else 256, 8, quick)
    return rows
