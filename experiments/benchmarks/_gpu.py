"""The GPU table of the steady-state estimators (`--large`): for each size, the estimator's
batch gradient, a bare `nd.relax` of the same batch (plain Euler relaxation) and the diffrax
`ImplicitAdjoint` peer, side by side, with the default settings (no precision environment
variable: float32 matmuls in TF32 on a GPU, which the default tolerances account for).

Lean by design, for a device whose time is counted: three compiled functions per size, no
old-path, `jax.grad` or hand-written rows (the CPU run has them). The peer runs at the
highest matmul precision: its PID controller and steady-state event test `rtol = 1e-5`,
below TF32's rounding, and at the default precision it would step to `max_steps`. Above
`peer_max_n` the peer is skipped (its `ImplicitAdjoint` solves a dense n x n system per
example: B n^2 floats and B n^3 flops at n = 4096, B = 256), and the row says so."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ._steady_peer import ours_functions, peer_functions, rel
from ._timing import row, time_side_by_side


def problem(kind: str, n: int, B: int):
    """The CPU sections' problems at size `n`: the RBP section's CTRNN or the EP section's
    Hopfield network (the RBP section's copy of it)."""
    from .rbp import _hopfield_problem, _problem

    if kind == "CTRNN":
        return _problem(n, B)
    if kind == "Hopfield":
        return _hopfield_problem(n, B)
    raise ValueError(f"unknown problem kind {kind!r}")


def steady_rows(section, estimator, label, kind, sizes, targets, repeats=5, peer_max_n=1024, what=""):
    """Rows `ours / nd.relax` and `ours / diffrax ImplicitAdjoint` for each `(n, B)` in
    `sizes`; `targets(n)` gives the two target strings. Non-convergence is recorded in the
    row (`converged_fraction`), never raised: a device run must come back with its table."""
    rows = []
    for n, B in sizes:
        net, xs, ys = problem(kind, n, B)
        relax, ours = ours_functions(estimator)
        _, peer = peer_functions()

        def peer_highest(net, xs, ys, peer=peer):
            with jax.default_matmul_precision("highest"):
                return peer(net, xs, ys)

        run_peer = n <= peer_max_n
        _, g_ours, info = ours(net, xs, ys)
        extra = dict(
            converged_fraction=float(jnp.mean(info["converged"])),
            fwd_steps=float(jnp.mean(info["steps"])),
            precision=str(jax.config.jax_default_matmul_precision or "default"),
        )
        calls = [(ours, net, xs, ys), (relax, net, xs)]
        if run_peer:
            _, g_peer = peer_highest(net, xs, ys)
            extra["ours_vs_peer_rel"] = rel(g_ours, g_peer)
            calls.append((peer_highest, net, xs, ys))
        times = time_side_by_side(calls, repeats=repeats)
        problem_name = f"{kind} n={n} B={B} float32{what}"
        to_relax, to_peer = targets(n)
        rows.append(row(section, problem_name, label, "nd.relax alone (Euler)", times[0], times[1], to_relax, **extra))
        peer_label = "diffrax ImplicitAdjoint (Tsit5+PID+steady_state_event, highest precision)"
        if run_peer:
            rows.append(row(section, problem_name, label, peer_label, times[0], times[2], to_peer, **extra))
        else:
            rows.append(
                row(
                    section,
                    problem_name,
                    label,
                    f"{peer_label}: skipped above n={peer_max_n}",
                    times[0],
                    math.nan,
                    to_peer,
                    **extra,
                )
            )
        eqx.clear_caches()  # one size's executables and buffers at a time on the device
    return rows
