"""RTRL cost per step against n: time should grow as O(n^2 m) ~ n^4 and memory as O(n m) ~
n^3 for a CTRNN (m ~ n^2); on a GPU, the achieved FLOP/s of the J p products."""

import diffrax
import equinox as eqx
import jax
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._timing import peak_bytes, row, time_fn


def run(quick: bool = False, large: bool = False):
    sizes = [8, 16] if quick else ([64, 128, 256] if large else [8, 16, 32, 64, 128])
    T = 20
    rows, times, mems = [], [], []
    for n in sizes:
        k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
        net = nd.networks.CTRNN(n, 4, 2, key=k1)
        xs, ys = jr.normal(k2, (T, 4)), jr.normal(k3, (T, 2))
        obj = nd.Trajectory(ts=np.arange(1, T + 1))

        @eqx.filter_jit
        def rtrl(net, xs, ys):
            return nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(), solver=diffrax.Euler(), dt0=1.0)[:2]

        @eqx.filter_jit
        def bptt(net, xs, ys):
            return nd.value_and_grad(net, xs, ys, objective=obj, estimator=nd.BPTT(), solver=diffrax.Euler(), dt0=1.0)[:2]

        t, _ = time_fn(rtrl, net, xs, ys, repeats=3)
        tb, _ = time_fn(bptt, net, xs, ys, repeats=3)
        m = sum(a.size for a in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
        mem = peak_bytes(rtrl, net, xs, ys)
        flops = 2.0 * n * n * m * T  # the J p product per step
        times.append(t / T)
        mems.append(mem or np.nan)
        rows.append(row("rtrl", f"CTRNN n={n} (m={m}) T={T} Euler", "nd.RTRL per step", "nd.BPTT per step", t / T, tb / T,
                        "time O(n^2 m), memory O(nm)", peak_bytes=mem, tflops=flops / t / 1e12))
    if len(sizes) > 2:
        ns = np.array(sizes, float)
        slope_t = float(np.polyfit(np.log(ns[-3:]), np.log(np.array(times[-3:])), 1)[0])
        slope_m = float(np.polyfit(np.log(ns[-3:]), np.log(np.array(mems[-3:])), 1)[0])
        for r in rows:
            r["time_slope_vs_n"] = slope_t
            r["memory_slope_vs_n"] = slope_m

    return rows
