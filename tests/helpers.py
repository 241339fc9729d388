"""Shared test machinery: tolerances, references, finite differences, estimator lists."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

import neurodyn as nd


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8):
    return eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol) is True


def assert_tree_close(x, y, *, rtol, atol, what=""):
    xs, ys = jtu.tree_leaves(x), jtu.tree_leaves(y)
    assert len(xs) == len(ys), f"{what}: different tree structures"
    for i, (a, b) in enumerate(zip(xs, ys)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{what} leaf {i}: shapes {a.shape} vs {b.shape}"
        err = np.max(np.abs(a - b)) if a.size else 0.0
        bound = atol + rtol * np.max(np.abs(b)) if b.size else atol
        assert err <= bound, f"{what} leaf {i}: max abs error {err:.3e} > {bound:.3e}"


def flat_grads(grads):
    """Concatenates the array leaves of a gradient tree into one vector."""
    leaves = jtu.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    return jnp.concatenate([jnp.ravel(g) for g in leaves])


def cosine(a, b):
    a, b = flat_grads(a), flat_grads(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def rel_error(a, b):
    a, b = flat_grads(a), flat_grads(b)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ---------------------------------------------------------------------------------------
# Test-only references, written independently of the library's loops.
# ---------------------------------------------------------------------------------------


def _euler_fixed(net, x, r, dt, n):
    def body(r, _):
        return r + dt * net(0.0, r, x), None

    r, _ = jax.lax.scan(body, r, None, length=n)
    return r


def dense_ift_grad(net, x, y, loss=nd.losses.squared_error, *, n_relax=4000, dt=0.5):
    """Exact steady-state gradient by the implicit function theorem with a dense solve.

    r* from a long fixed-step relaxation polished by Newton steps; then
    `dl/dw = -dl/dr* J^-1 dF/dw + d l(readout)/dw` with J dense (float64, small n only)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    r = _euler_fixed(net, x, net.init_state(x), dt, n_relax)
    for _ in range(5):
        F = net(0.0, r, x)
        J = jax.jacfwd(lambda r: net(0.0, r, x))(r)
        r = r - jnp.linalg.solve(J, F)
    J = jax.jacfwd(lambda r: net(0.0, r, x))(r)

    def loss_of(p, r):
        return loss(eqx.combine(p, static).readout(r), y)

    dl_dr = jax.grad(loss_of, argnums=1)(params, r)
    v = jnp.linalg.solve(J.T, -dl_dr)
    _, vjp = jax.vjp(lambda p: eqx.combine(p, static)(0.0, r, x), params)
    (g_dyn,) = vjp(v)
    g_direct = jax.grad(loss_of)(params, r)
    grads = jtu.tree_map(lambda a, b: a + b, g_dyn, g_direct)
    return loss_of(params, r), grads, r


def fine_trajectory_grad(net, xs, y, ts, loss=nd.losses.squared_error, weights=None, n_sub=200):
    """`jax.grad` through a fine fixed-step RK4 `lax.scan` of the trajectory (the reference)."""
    ts = np.asarray(ts, dtype=np.float64)
    starts = np.concatenate([[0.0], ts[:-1]])

    def run(net):
        def interval(r, inp):
            x, t0, t1 = inp
            h = (t1 - t0) / n_sub

            def rk4(r, _):
                def f(r):
                    return net(0.0, r, x)

                k1 = f(r)
                k2 = f(r + 0.5 * h * k1)
                k3 = f(r + 0.5 * h * k2)
                k4 = f(r + h * k3)
                return r + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

            r, _ = jax.lax.scan(rk4, r, None, length=n_sub)
            return r, r

        _, rs = jax.lax.scan(interval, net.init_state(xs[0]), (xs, jnp.asarray(starts), jnp.asarray(ts)))
        per = jax.vmap(lambda r, yk: loss(net.readout(r), yk))(rs, y)
        w = jnp.ones_like(per) if weights is None else jnp.asarray(weights, per.dtype)
        return jnp.sum(w * per)

    return eqx.filter_value_and_grad(run)(net)


def finite_difference_grad(f, net, *, eps=1e-6, n_probe=6, key=jr.PRNGKey(0)):
    """Directional finite differences of `f(net)` along random directions.

    Returns `(directions, fd_values)` so a test compares `<grad, d>` with `fd`."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(params)
    out = []
    for i in range(n_probe):
        keys = jr.split(jr.fold_in(key, i), len(leaves))
        d = [jr.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
        dtree = jtu.tree_unflatten(treedef, d)
        plus = eqx.combine(jtu.tree_map(lambda p, u: p + eps * u, params, dtree), static)
        minus = eqx.combine(jtu.tree_map(lambda p, u: p - eps * u, params, dtree), static)
        out.append((dtree, (f(plus) - f(minus)) / (2 * eps)))
    return out


def directional(grads, d):
    g = jtu.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    dl = jtu.tree_leaves(d)
    return sum(jnp.sum(a * b) for a, b in zip(g, dl))


# ---------------------------------------------------------------------------------------
# What the shared suites parametrise over. Estimators and network families appear here as
# they land, so every test written against these lists covers them automatically.
# ---------------------------------------------------------------------------------------


def small_networks(key):
    """(name, network, is_energy) for every network family at small sizes."""
    k = jr.split(key, 8)
    nets = [
        ("ctrnn-rate", nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, "rate", key=k[0])),
        ("ctrnn-current", nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, "current", key=k[1])),
        ("hopfield", nd.networks.Hopfield(3, 5, 2, key=k[2])),
        ("layered", nd.networks.Layered((3, 5, 4, 2), nd.activations.tanh, key=k[3])),
    ]
    try:
        from families import extra_networks  # network families of issue 8
    except ImportError:
        extra_networks = None
    if extra_networks is not None:
        nets += extra_networks(k[4])
    return nets


def steady_state_estimators():
    ests = [("bptt", nd.BPTT())]
    if hasattr(nd, "RBP"):
        ests.append(("rbp", nd.RBP()))
    if hasattr(nd, "RTRL"):
        ests.append(("rtrl", nd.RTRL()))
    return ests


def trajectory_estimators():
    ests = [("bptt", nd.BPTT())]
    if hasattr(nd, "RTRL"):
        ests.append(("rtrl", nd.RTRL()))
    return ests


EULER1 = dict(solver=diffrax.Euler(), dt0=1.0)


class Killed(Exception):
    """What `DyingRun` raises: the process "died" right after a checkpoint."""


class DyingRun:
    """A RunDir that dies right after its `after`-th checkpoint, as a SIGKILL would."""

    def __init__(self, path, after):
        from neurodyn.runs import RunDir

        self.inner, self.after = RunDir(path), after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save_checkpoint(self, tree, meta):
        self.inner.save_checkpoint(tree, meta)
        if meta["step"] == self.after:
            raise Killed
