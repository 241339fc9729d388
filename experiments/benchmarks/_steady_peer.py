"""The diffrax peer for steady-state gradients: Tsit5 + PIDController(1e-5, 1e-6) +
steady_state_event, differentiated with ImplicitAdjoint (ANCHORS.md's measured setting)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import neurodyn as nd


def _vf(t, r, args):
    net, x = args
    return net(t, r, x)


def diffrax_steady_loss(net, x, y, loss=nd.losses.squared_error):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_vf),
        diffrax.Tsit5(),
        t0=0.0,
        t1=jnp.inf,
        dt0=0.1,
        y0=net.init_state(x),
        args=(net, x),
        stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-6),
        event=diffrax.Event(diffrax.steady_state_event()),
        adjoint=diffrax.ImplicitAdjoint(),
        max_steps=100_000,
        throw=False,
    )
    return loss(net.readout(sol.ys[-1]), y)


def peer_functions(objective_loss=nd.losses.squared_error):
    @eqx.filter_jit
    def forward(net, xs, ys):
        return jnp.mean(jax.vmap(lambda x, y: diffrax_steady_loss(net, x, y, objective_loss))(xs, ys))

    @eqx.filter_jit
    def grad(net, xs, ys):
        return eqx.filter_value_and_grad(forward)(net, xs, ys)

    return forward, grad


def ours_functions(estimator, objective=None, **options):
    objective = objective or nd.SteadyState()

    @eqx.filter_jit
    def relax(net, xs):
        return jax.vmap(lambda x: nd.relax(net, x, **options)[0])(xs)

    @eqx.filter_jit
    def grad(net, xs, ys):
        losses, grads, info = jax.vmap(
            lambda x, y: nd.value_and_grad(net, x, y, objective=objective, estimator=estimator, **options)
        )(xs, ys)
        return jnp.mean(losses), nd.batch_mean(grads), info

    return relax, grad


def rel(a, b):
    import numpy as np

    fa = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))])
    fb = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array))])
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))
