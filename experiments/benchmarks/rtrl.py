"""RTRL cost per step against n, and the peer forward-sensitivity method.

Exact RTRL costs O(n^2 m) time and O(nm) memory per step; for a CTRNN (m ~ n^2) that is
~n^4 and ~n^3. This section times one `nd.RTRL()` value-and-grad of a T-step Euler
(dt = 1) trajectory of a CTRNN for each n, fits the log-log slopes of time and planned
peak memory per step against n and prints them, and times the peer side by side:
diffrax's `ForwardMode` adjoint under `eqx.filter_jacfwd` (forward sensitivities with one
tangent per parameter, an m x m basis, so only up to a moderate n). `nd.BPTT()` is shown
for scale. With `large=True` (GPU sizes) it also reports the achieved TFLOP/s of the
`J p` products (2 n^2 m flops per step) against the device's float32 matmul rate,
measured here on an 8192^2 product and on the same-shaped `(n, n) x (n, m)` product.
"""

import sys
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._timing import peak_bytes, row, time_fn


def _problem(n, T, n_in=4, n_out=2, seed=0):
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    net = nd.networks.CTRNN(n, n_in, n_out, key=k1)
    return net, jr.normal(k2, (T, n_in)), jr.normal(k3, (T, n_out))


def _diffrax_loss(net, xs, ys):
    # The same problem through diffeqsolve: Euler dt = 1, xs[k] held on (k, k + 1].
    T = xs.shape[0]

    def vf(t, r, args):
        k = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, T - 1)
        return net(t, r, xs[k])

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Euler(),
        t0=0.0,
        t1=float(T),
        dt0=1.0,
        y0=net.init_state(xs[0]),
        saveat=diffrax.SaveAt(ts=jnp.arange(1, T + 1, dtype=xs.dtype)),
        stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=diffrax.ForwardMode(),
        max_steps=T + 2,
    )
    return jnp.sum(jax.vmap(lambda r, y: nd.losses.squared_error(net.readout(r), y))(sol.ys, ys))


def _n_params(net):
    return sum(a.size for a in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))


def _rel(a, b):
    fa = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
    fb = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def _matmul_tflops(a_shape, b_shape, dtype=jnp.float32):
    a = jr.normal(jr.PRNGKey(1), a_shape, dtype)
    b = jr.normal(jr.PRNGKey(2), b_shape, dtype)
    f = jax.jit(jnp.dot)
    t, _ = time_fn(f, a, b, repeats=5, min_time=0.05)
    return 2.0 * a_shape[0] * a_shape[1] * b_shape[1] / t / 1e12


def _slope(ns, values):
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = np.isfinite(values) & (values > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def run(quick: bool = False, large: bool = False):
    if quick:
        sizes, T, peer_max = [8, 16], 5, 16
    elif large:
        sizes, T, peer_max = [128, 256, 512, 1024], 10, 128
    else:
        sizes, T, peer_max = [8, 16, 32, 64, 128], 10, 64
    opts = dict(solver=diffrax.Euler(), dt0=1.0)
    obj = nd.Trajectory(ts=np.arange(1, T + 1))
    device_rate = _matmul_tflops((8192, 8192), (8192, 8192)) if large else float("nan")
    rows, times, mems, ms = [], [], [], []
    for n in sizes:
        net, xs, ys = _problem(n, T)
        m = _n_params(net)

        @eqx.filter_jit
        def rtrl(net, xs, ys):
            return nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), **opts)[:2]

        @eqx.filter_jit
        def bptt(net, xs, ys):
            return nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(), **opts)[:2]

        @eqx.filter_jit
        def peer(net, xs, ys):
            return eqx.filter_jacfwd(_diffrax_loss)(net, xs, ys)

        try:
            t0 = time.perf_counter()
            (_, g_ours) = jax.block_until_ready(rtrl(net, xs, ys))
            compile_s = time.perf_counter() - t0  # compilation and one run
            (_, g_bptt) = bptt(net, xs, ys)
        except Exception as e:  # noqa: BLE001 - a size beyond the device's memory ends the sweep
            print(f"[rtrl] n={n}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            break
        err = _rel(g_ours, g_bptt)
        if not err < 1e-3:
            raise AssertionError(f"nd.RTRL disagrees with nd.BPTT at n={n} (rel err {err:.2e})")
        t, _ = time_fn(rtrl, net, xs, ys, repeats=3)
        tb, _ = time_fn(bptt, net, xs, ys, repeats=3)
        mem = peak_bytes(rtrl, net, xs, ys)
        flops = 2.0 * n * n * m  # the J p product per step
        extra = dict(
            n=n,
            m=m,
            T=T,
            per_step_ms=1e3 * t / T,
            compile_s=compile_s,
            peak_bytes=mem,
            bytes_per_nm=(mem / (n * m)) if mem else None,
            grad_rel_err_vs_bptt=err,
            bptt_ms=1e3 * tb,
            tflops=flops * T / t / 1e12,
        )
        if large:
            same_shape = _matmul_tflops((n, n), (n, m))
            extra.update(
                matmul_tflops=device_rate,
                same_shape_matmul_tflops=same_shape,
                fraction_of_matmul=extra["tflops"] / device_rate,
            )
        problem = f"CTRNN n={n} (m={m}), {T} Euler steps"
        if n <= peer_max:
            g_peer = peer(net, xs, ys)
            extra["peer_grad_rel_err"] = _rel(g_peer, g_ours)
            tp, _ = time_fn(peer, net, xs, ys, repeats=3)
            extra["peer_peak_bytes"] = peak_bytes(peer, net, xs, ys)
            rows.append(
                row(
                    "rtrl",
                    problem,
                    "nd.RTRL value_and_grad",
                    "diffrax ForwardMode jacfwd",
                    t,
                    tp,
                    "time O(n^2 m), memory O(nm)",
                    **extra,
                )
            )
        else:
            rows.append(
                row(
                    "rtrl",
                    problem,
                    "nd.RTRL value_and_grad",
                    "(peer: m x m tangents, skipped)",
                    t,
                    float("nan"),
                    "time O(n^2 m), memory O(nm)",
                    **extra,
                )
            )
        times.append(t / T)
        mems.append(mem or np.nan)
        ms.append(m)
        msg = f"[rtrl] n={n} m={m}: {1e3 * t / T:.3f} ms/step, {extra['tflops']:.3f} TFLOP/s in J p"
        if large:
            msg += f" ({100 * extra['fraction_of_matmul']:.0f}% of the {device_rate:.1f} TFLOP/s matmul rate)"
        print(msg + f", planned peak {mem} bytes, rel err vs BPTT {err:.1e}", file=sys.stderr)

    done = sizes[: len(times)]
    fit = [i for i, n in enumerate(done) if n >= 32] if not (quick or large) else list(range(len(done)))
    if len(fit) >= 2:
        ns = [done[i] for i in fit]
        slope_t = _slope(ns, [times[i] for i in fit])
        slope_m = _slope(ns, [mems[i] for i in fit])
        slope_work = _slope(ns, [done[i] ** 2 * ms[i] for i in fit])  # n^2 m for these m
        slope_nm = _slope(ns, [done[i] * ms[i] for i in fit])
        print(
            f"[rtrl] log-log slopes over n={ns}: time/step {slope_t:.2f} (n^2 m grows as n^{slope_work:.2f}), "
            f"peak memory {slope_m:.2f} (n m grows as n^{slope_nm:.2f})",
            file=sys.stderr,
        )
        for r in rows:
            r.update(
                time_slope_vs_n=slope_t,
                memory_slope_vs_n=slope_m,
                n2m_slope_vs_n=slope_work,
                nm_slope_vs_n=slope_nm,
                slope_fit_ns=ns,
            )
    return rows
