"""BPTT against `nd.rollout` alone and against diffrax's default adjoint
(`RecursiveCheckpointAdjoint`) on the same fixed-step Euler trajectory problem."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd

from ._timing import row, time_fn


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
    def vf(t, r, args):
        return net(t, r, x[0])

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


def run(quick: bool = False, large: bool = False):
    sizes = [(64, 16)] if quick else ([(256, 256), (1024, 256), (4096, 256)] if large else [(64, 32), (256, 32)])
    rows = []
    for n, B in sizes:
        net, xs, ys, ts, dt = _problem(n, B)
        obj = nd.Trajectory(nd.losses.squared_error, ts)
        opts = dict(solver=diffrax.Euler(), dt0=dt)

        @eqx.filter_jit
        def forward(net, xs):
            return jax.vmap(lambda x: nd.rollout(net, x, ts, **opts)[0])(xs)

        @eqx.filter_jit
        def ours(net, xs, ys):
            def one(x, y):
                return nd.value_and_grad(net, x, y, objective=obj, estimator=nd.BPTT(), **opts)[:2]

            losses, grads = jax.vmap(one)(xs, ys)
            return jnp.mean(losses), nd.batch_mean(grads)

        @eqx.filter_jit
        def peer_forward(net, xs, ys):
            return jnp.mean(jax.vmap(lambda x, y: _diffrax_loss(net, x, y, ts, dt))(xs, ys))

        @eqx.filter_jit
        def peer(net, xs, ys):
            return eqx.filter_value_and_grad(peer_forward)(net, xs, ys)

        # Same problem: both gradients are checked against a plain unrolled lax.scan.
        (_, g_ours), (_, g_peer) = ours(net, xs, ys), peer(net, xs, ys)
        g_ref = _scan_reference(net, xs, ys, len(ts), int(round(ts[0] / dt)), dt)
        err = _rel(g_ours.W, g_ref.W)
        peer_err = _rel(g_peer.W, g_ref.W)
        if not err < 1e-3:
            raise AssertionError(f"nd.BPTT disagrees with the lax.scan reference (rel err {err:.2e})")
        t_fwd, _ = time_fn(forward, net, xs)
        t_ours, c_ours = time_fn(ours, net, xs, ys)
        t_peer_fwd, _ = time_fn(peer_forward, net, xs, ys)
        t_peer, c_peer = time_fn(peer, net, xs, ys)
        steps = int(round(ts[-1] / dt))
        problem = f"CTRNN n={n} B={B}, Euler {steps} steps, {len(ts)} saves"
        rows.append(row("bptt", problem, "nd.BPTT value_and_grad", "nd.rollout (forward only)",
                        t_ours, t_fwd, "<= 3x", grad_rel_err=err))
        rows.append(row("bptt", problem, "nd.BPTT value_and_grad", "diffrax RecursiveCheckpointAdjoint grad",
                        t_ours, t_peer, "<= 0.5x", grad_rel_err=err, peer_grad_rel_err=peer_err,
                        peer_forward_ms=1e3 * t_peer_fwd))
    return rows
