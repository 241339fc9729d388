"""Relaxations too slow for their budget: the slow-progress test of `FixedStep`, side by side
with the same relaxation without it, at parameters where training left many of them.

EP (centered, beta = 0.1) trains a `LayeredHopfield` (40, 100, 10) on MNIST-1D (Greydanus
2020) with Adam at 1e-2, Euler `dt0 = 1` and batches of 100. Within a few epochs the
parameters drift to where a part of the examples no longer converge: some oscillate (the
patience test stops them), others crawl towards an equilibrium that is barely stable, their
residual falling like a power of the step count, by 1% every few checks, never near the
tolerance. Before the slow-progress test each of those ran thousands of steps, up to
`max_steps`, in every phase, and each batch waits for its slowest example.

At the trained parameters, one pass of EP batch gradients (`nd.batch_value_and_grad`) over
the training set is timed with the default relaxation (`FixedStep(check_every=2)`: patience
100 checks and the slow-progress test, `budget_margin = 2`) and with the slow-progress test
off (`budget_margin=None`), side by side. The test may only stop what would not have
converged: the same examples must converge on both sides (checked before timing).
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

    def gradient_pass(relaxation):
        @jax.jit
        def one(net, xb, yb):
            return nd.batch_value_and_grad(
                net, xb, yb, objective=objective, estimator=estimator, dt0=1.0, relaxation=relaxation
            )

        def whole(net):
            return [one(net, X[i : i + batch], Y[i : i + batch]) for i in range(0, n_train, batch)]

        return whole

    with_test = gradient_pass(nd.relaxation.FixedStep(check_every=2))
    without = gradient_pass(nd.relaxation.FixedStep(check_every=2, budget_margin=None))

    def summary(outs):
        info = jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *[o[2] for o in outs])
        converged = info["converged"]
        # The slowest phase of each example: the free relaxation, or the sum of the nudged ones.
        slowest = np.maximum(info["steps"], info["nudged_steps"])
        per_batch = slowest.reshape(-1, batch).max(axis=1)
        return converged, dict(
            converged=int(converged.sum()),
            stagnated=int(np.sum(info["result"]._value == nd.RESULTS.stagnated._value)),
            batch_max_steps_median=float(np.median(per_batch)),
            max_steps=int(slowest.max()),
        )

    conv_with, s_with = summary(with_test(net))
    conv_without, s_without = summary(without(net))
    if not np.array_equal(conv_with, conv_without):
        raise AssertionError(
            f"the slow-progress test changed which examples converge: {s_with['converged']} with it, "
            f"{s_without['converged']} without"
        )
    t_with, t_without = time_side_by_side([(with_test, net), (without, net)], repeats=repeats, min_time=0.0)
    problem = (
        f"LayeredHopfield (40, {hidden}, 10), EP centered beta 0.1, after {epochs} epochs of Adam 1e-2 "
        f"(dt0 1, batches of {batch}) on MNIST-1D: EP batch gradients over {n_train} examples"
    )
    extra = {f"with_{k}": v for k, v in s_with.items()} | {f"without_{k}": v for k, v in s_without.items()}
    return [
        row(
            "stalled",
            problem,
            "FixedStep(check_every=2), slow-progress test (budget_margin 2, the default)",
            "FixedStep(check_every=2, budget_margin=None): patience test only",
            t_with,
            t_without,
            f"below 1; converged {s_with['converged']}/{n_train} on both sides, stagnated "
            f"{s_with['stagnated']}; slowest example per batch (median) {s_with['batch_max_steps_median']:.0f} "
            f"against {s_without['batch_max_steps_median']:.0f} steps",
            **extra,
        )
    ]
