"""What a call from plain Python costs over the same call inside `jax.jit`.

A researcher's loop, a notebook cell or a script calls `nd.relax`, `nd.value_and_grad` and
`nd.batch_value_and_grad` directly, with no `jit` of their own. Each such call checks its
input (shapes, dtypes, options) in Python, then dispatches the compiled computation. This
section times the same calls three ways, side by side, on a problem small enough for that
Python cost to show (Hopfield n = 64, B = 8, float32):

- top level: `nd.batch_value_and_grad(net, xs, ys, ...)` as a user writes it;
- inside `eqx.filter_jit`: the user's own jit around the call (the checks then run once, at
  trace time), with equinox's dispatch;
- inside `jax.jit`: the network's arrays passed as the argument, the leanest dispatch JAX has.

The ratio top level / `jax.jit` is the price of calling from Python: the checks plus the
dispatch. The calls are checked to return the same numbers before timing.
"""

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._timing import row, time_side_by_side


def _three_ways(call, net, *data):
    """`call(net, *data)` at top level, inside `eqx.filter_jit`, and inside `jax.jit` with
    the network's arrays as the argument."""
    params, static = eqx.partition(net, eqx.is_array)
    filtered = eqx.filter_jit(call)
    jitted = jax.jit(lambda p, *d: call(eqx.combine(p, static), *d))
    return [(call, net, *data), (filtered, net, *data), (jitted, params, *data)]


def _same(outs):
    ref = jax.tree.leaves(outs[0])
    for out in outs[1:]:
        for a, b in zip(ref, jax.tree.leaves(out), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype.kind == "f":
                if not np.allclose(a, b, rtol=1e-5, atol=1e-6):
                    raise AssertionError("a top-level call and its jitted twin disagree")
            elif not np.array_equal(a, b):
                raise AssertionError("a top-level call and its jitted twin disagree")


def run(quick: bool = False, large: bool = False):
    del large  # Python's cost does not grow with the device
    n, B, n_in, n_out = 64, 8, 16, 4
    k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
    net = nd.networks.Hopfield(n_in, n - n_out, n_out, key=k1)
    xs, ys = jr.uniform(k2, (B, n_in)), jr.uniform(k3, (B, n_out))
    obj, est = nd.SteadyState(), nd.RBP()
    calls = {
        "nd.relax (one example)": (lambda net, x: nd.relax(net, x), (xs[0],)),
        "nd.value_and_grad, RBP (one example)": (
            lambda net, x, y: nd.value_and_grad(net, x, y, objective=obj, estimator=est),
            (xs[0], ys[0]),
        ),
        f"nd.batch_value_and_grad, RBP (B={B})": (
            lambda net, xs, ys: nd.batch_value_and_grad(net, xs, ys, objective=obj, estimator=est),
            (xs, ys),
        ),
    }
    rows = []
    problem = f"Hopfield n={n} float32, from plain Python"
    for label, (call, data) in calls.items():
        ways = _three_ways(call, net, *data)
        _same([fn(*args) for fn, *args in ways])
        t_top, t_filter, t_jit = time_side_by_side(ways, repeats=3 if quick else 15)
        extra = dict(python_us=1e6 * (t_top - t_jit))
        rows.append(
            row("overhead", problem, f"{label}, top level", "the same inside jax.jit", t_top, t_jit, "context", **extra)
        )
        rows.append(
            row(
                "overhead",
                problem,
                f"{label}, inside eqx.filter_jit",
                "the same inside jax.jit",
                t_filter,
                t_jit,
                "context",
            )
        )
    return rows
