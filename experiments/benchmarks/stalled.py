"""Loops too slow for their budget: the slow-progress test of `FixedStep` and the stopping
rules of `AdjointODE`, side by side with the same loops without them, at parameters where
training left many such loops.

EP (centered, beta = 0.1) trains a `LayeredHopfield` (40, 100, 10) on MNIST-1D (Greydanus
2020) with Adam at 1e-2, Euler `dt0 = 1` and batches of 100. Within a few epochs the
parameters drift to where a part of the examples no longer converge: some oscillate (the
patience test stops them), others crawl towards an equilibrium that is barely stable, their
residual falling like a power of the step count, by 1% every few checks, never near the
tolerance. Before the slow-progress test each of those ran thousands of steps, up to
`max_steps`, in every phase, and each batch waits for its slowest example.

At the trained parameters, one pass of EP and one of RBP batch gradients
(`nd.batch_value_and_grad`) over the training set are each timed with the defaults
(`FixedStep(check_every=2)`: patience 100 checks and the slow-progress test, `budget_margin =
2`; RBP's `AdjointODE` with the same rules) and with the rules added on 2026-12-02 off,
side by side. RBP's adjoint solve at an example whose relaxation failed (a state that is not
an equilibrium) can diverge slowly: it ran all 10 000 steps before, and every batch had such
an example. The rules may only stop what would not have converged: the same examples must
converge on both sides (checked before timing).

Then the same passes relaxed with `nd.relaxation.Backoff()` (the step halved per example
where `dt0 = 1` overshoots), against the defaults: how many more examples converge, and at
what cost. Last, one epoch of `nd.training.fit` with `Backoff` at those parameters, with its
warm start across mini-batches (`warm_backoff=True`) and without.
"""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import neurodyn as nd

from ._timing import row, time_side_by_side


def _train(net, X, Y, epochs, estimator, objective, batch, lr=1e-2):
    """Adam on EP batch gradients, the training a user writes (default relaxation)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        m = eqx.combine(params, static)
        _, g, _ = nd.batch_value_and_grad(m, xb, yb, objective=objective, estimator=estimator, dt0=1.0)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for epoch in range(epochs):
        perm = np.random.default_rng(epoch).permutation(len(X))
        for i in range(0, len(perm) - batch + 1, batch):
            idx = perm[i : i + batch]
            params, state = step(params, state, X[idx], Y[idx])
    return eqx.combine(params, static)


def run(quick: bool = False, large: bool = False):
    del large  # a CPU training run; its size does not depend on the device
    hidden, epochs, n_train, repeats = (32, 2, 1000, 2) if quick else (100, 8, 4000, 3)
    batch = 100
    try:
        X, y = nd.data.mnist1d()
    except ImportError as e:  # the `data` extra
        print(f"[stalled] skipped: {e}", file=sys.stderr)
        return []
    X, Y = jnp.asarray(X[:n_train]), jax.nn.one_hot(y[:n_train], 10)
    estimator = nd.EP(beta=0.1, variant="centered")
    objective = nd.SteadyState(nd.losses.squared_error)
    net = nd.networks.LayeredHopfield((40, hidden, 10), key=jr.PRNGKey(0))
    net = _train(net, X, Y, epochs, estimator, objective, batch)

    def gradient_pass(estimator, relaxation):
        @jax.jit
        def one(net, xb, yb):
            return nd.batch_value_and_grad(
                net, xb, yb, objective=objective, estimator=estimator, dt0=1.0, relaxation=relaxation
            )

        def whole(net):
            return [one(net, X[i : i + batch], Y[i : i + batch]) for i in range(0, n_train, batch)]

        return whole

    def summary(outs):
        info = jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *[o[2] for o in outs])
        converged = info["converged"]
        # Each example's slowest loop: the free relaxation, the sum of EP's nudged ones, or
        # RBP's adjoint solve.
        slowest = np.maximum(info["steps"], info.get("nudged_steps", info.get("adjoint_steps", 0)))
        per_batch = slowest.reshape(-1, batch).max(axis=1)
        return converged, dict(
            converged=int(converged.sum()),
            stagnated=int(np.sum(info["result"]._value == nd.RESULTS.stagnated._value)),
            batch_max_steps_median=float(np.median(per_batch)),
            max_steps=int(slowest.max()),
        )

    # The defaults, and the same loops with the rules of 2026-12-02 off: the forward
    # relaxation's slow-progress test (`budget_margin`) and the adjoint solve's stopping rules.
    free = nd.relaxation.FixedStep(check_every=2)
    free_off = nd.relaxation.FixedStep(check_every=2, budget_margin=None)
    rbp_off = nd.RBP(adjoint=nd.adjoint.AdjointODE(patience=None, budget_margin=None))
    cases = [
        ("EP centered beta 0.1", gradient_pass(estimator, free), gradient_pass(estimator, free_off)),
        ("RBP (AdjointODE)", gradient_pass(nd.RBP(), free), gradient_pass(rbp_off, free_off)),
    ]

    def problem(label):
        return (
            f"LayeredHopfield (40, {hidden}, 10) after {epochs} epochs of EP (centered, beta 0.1) with Adam "
            f"1e-2 (dt0 1, batches of {batch}) on MNIST-1D: {label} batch gradients over {n_train} examples"
        )

    rows = []
    for label, with_rules, without in cases:
        conv_with, s_with = summary(with_rules(net))
        conv_without, s_without = summary(without(net))
        if not np.array_equal(conv_with, conv_without):
            raise AssertionError(
                f"{label}: the stopping rules changed which examples converge: {s_with['converged']} with "
                f"them, {s_without['converged']} without"
            )
        t_with, t_without = time_side_by_side([(with_rules, net), (without, net)], repeats=repeats, min_time=0.0)
        extra = {f"with_{k}": v for k, v in s_with.items()} | {f"without_{k}": v for k, v in s_without.items()}
        rows.append(
            row(
                "stalled",
                problem(label),
                "defaults (slow-progress test, budget_margin 2; AdjointODE's stopping rules)",
                "budget_margin=None (and AdjointODE(patience=None, budget_margin=None))",
                t_with,
                t_without,
                f"below 1; converged {s_with['converged']}/{n_train} on both sides, stagnated "
                f"{s_with['stagnated']}; slowest loop per batch (median) {s_with['batch_max_steps_median']:.0f} "
                f"against {s_without['batch_max_steps_median']:.0f} steps",
                **extra,
            )
        )
    # The same passes relaxed with `nd.relaxation.Backoff()`, which halves the step per example
    # where dt0 = 1 overshoots (RBP's adjoint following it), against the default fixed step.
    backoff = nd.relaxation.Backoff()
    for label, est in [("EP centered beta 0.1", estimator), ("RBP (AdjointODE)", nd.RBP())]:
        adaptive, fixed = gradient_pass(est, backoff), gradient_pass(est, free)
        _, s_adaptive = summary(adaptive(net))
        _, s_fixed = summary(fixed(net))
        t_adaptive, t_fixed = time_side_by_side([(adaptive, net), (fixed, net)], repeats=repeats, min_time=0.0)
        extra = {f"backoff_{k}": v for k, v in s_adaptive.items()} | {f"fixed_{k}": v for k, v in s_fixed.items()}
        rows.append(
            row(
                "stalled",
                problem(label),
                "relaxation=Backoff() (dt0 1, halved per example where it overshoots)",
                "the default FixedStep(check_every=2) at dt0 1",
                t_adaptive,
                t_fixed,
                f"context: converged {s_adaptive['converged']}/{n_train} against {s_fixed['converged']}; slowest "
                f"loop per batch (median) {s_adaptive['batch_max_steps_median']:.0f} against "
                f"{s_fixed['batch_max_steps_median']:.0f} steps",
                **extra,
            )
        )
    # One epoch of `fit` with a Backoff relaxation (SGD at rate 0: the parameters stay
    # these): each batch's relaxations starting at the step most of the previous batch's
    # ended with (`warm_backoff=True`, the default), against all from dt0.
    still = optax.sgd(0.0)  # one optimiser: the fits share a compilation
    for label, est in [("EP centered beta 0.1", estimator), ("RBP (AdjointODE)", nd.RBP())]:

        def epoch(net, warm, est=est):
            return nd.training.fit(
                net,
                (X, Y),
                objective=objective,
                estimator=est,
                optimizer=still,
                epochs=1,
                batch_size=batch,
                key=jr.PRNGKey(0),
                progress=False,
                relaxation=backoff,
                warm_backoff=warm,
            )[1][0]

        warm_row, cold_row = epoch(net, True), epoch(net, False)
        t_warm, t_cold = time_side_by_side([(epoch, net, True), (epoch, net, False)], repeats=repeats, min_time=0.0)
        rows.append(
            row(
                "stalled",
                problem(label).replace("batch gradients over", "one epoch of nd.training.fit over"),
                "fit(relaxation=Backoff(), warm_backoff=True): each batch from the step most of the last ended with",
                "warm_backoff=False: every relaxation from dt0 1",
                t_warm,
                t_cold,
                f"below 1; mean final step {warm_row['mean_dt']:.3f} against {cold_row['mean_dt']:.3f}, mean "
                f"starting step {warm_row['start_dt']:.3f}; converged {warm_row['converged_rate']:.3f} against "
                f"{cold_row['converged_rate']:.3f}",
                warm_mean_dt=warm_row["mean_dt"],
                cold_mean_dt=cold_row["mean_dt"],
                warm_start_dt=warm_row["start_dt"],
                warm_loss=warm_row["train_loss"],
                cold_loss=cold_row["train_loss"],
            )
        )
    return rows
