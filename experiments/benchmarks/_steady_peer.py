"""The peers for steady-state gradients: diffrax Tsit5 + PIDController(1e-5, 1e-6) +
steady_state_event, differentiated with ImplicitAdjoint (ANCHORS.md's measured setting),
and optimistix `fixed_point` + `ImplicitAdjoint` on the same network."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import neurodyn as nd


def peer_field(net):
    """The network's vector field as a diffrax user writes it, with `W @ r` products: the
    field every peer integrates. neurodyn's CTRNN and Hopfield contract the state axis first
    (`R W^T` under vmap), which is faster in our batch-inside loops but slowed the vmapped
    diffrax BPTT peer from 74 to 85 ms (n = 256, B = 32): each side gets its faster form, and
    `check_peer_field` checks they are the same field. Other networks: their own `__call__`."""
    nets = nd.networks
    if isinstance(net, nets.CTRNN) and net.W_index is None:

        def field(t, r, x):
            f = net.activation
            if net.form == "rate":
                return (-r + f(net.W @ r + net.U @ x + net.b)) / net.tau
            return (-r + net.W @ f(r) + net.U @ x + net.b) / net.tau

        return field
    if isinstance(net, nets.Hopfield) and net.W_index is None:

        def field(t, r, x):
            rho, drho = jax.jvp(net.activation, (r,), (jnp.ones_like(r),))
            return -r + drho * (net.symmetric_weights @ rho + net.U @ x + net.b)

        return field
    return net


def check_peer_field(net, x):
    """The peers' field equals the network's, at a random state (float32 rounding)."""
    r = jax.random.normal(jax.random.PRNGKey(1), (net.n_state,), x.dtype)
    ours, peer = net(0.0, r, x), peer_field(net)(0.0, r, x)
    err = float(jnp.max(jnp.abs(ours - peer)) / jnp.max(jnp.abs(ours)))
    if not err < 1e-5:
        raise AssertionError(f"the peers' vector field differs from the network's (rel err {err:.2e})")


def _vf(t, r, args):
    net, x = args
    return peer_field(net)(t, r, x)


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
    """`(relax, grad)`: the vmapped `nd.relax` of a batch and the batch path,
    `nd.batch_value_and_grad` (states per example, one reverse pass for the parameters)."""
    objective = objective or nd.SteadyState()

    @eqx.filter_jit
    def relax(net, xs):
        return jax.vmap(lambda x: nd.relax(net, x, **options)[0])(xs)

    @eqx.filter_jit
    def grad(net, xs, ys):
        return nd.batch_value_and_grad(net, xs, ys, objective=objective, estimator=estimator, **options)

    return relax, grad


def per_example_functions(estimator, objective=None, **options):
    """The old path, for the side-by-side rows: `nd.batch_mean` of the vmapped one-example
    `nd.value_and_grad`."""
    objective = objective or nd.SteadyState()

    @eqx.filter_jit
    def grad(net, xs, ys):
        losses, grads, info = jax.vmap(
            lambda x, y: nd.value_and_grad(net, x, y, objective=objective, estimator=estimator, **options)
        )(xs, ys)
        return jnp.mean(losses), nd.batch_mean(grads), info

    return grad


def through_grad_function(estimator, objective=None, **options):
    """`jax.grad` of the loss `nd.batch_value_and_grad` returns (its batch-level custom VJP)."""
    objective = objective or nd.SteadyState()

    @eqx.filter_jit
    def through_grad(net, xs, ys):
        def loss(net):
            return nd.batch_value_and_grad(net, xs, ys, objective=objective, estimator=estimator, **options)[0]

        return eqx.filter_value_and_grad(loss)(net)

    return through_grad


def check_batch_path(section, net, xs, ys, grad, old, through):
    """`(d_old, d_through)`: the batch path's gradient against the old path's (`nd.batch_mean`
    of the vmapped `nd.value_and_grad`) and `jax.grad` of the batch loss against the returned
    `grads`, relative; asserts both agree. A steady-state batch also checks the peers' field."""
    if xs.ndim == 2:
        check_peer_field(net, xs[0])
    _, g_grad, _ = grad(net, xs, ys)
    _, g_old, _ = old(net, xs, ys)
    _, g_through = through(net, xs, ys)
    d_old, d_through = rel(g_grad, g_old), rel(g_through, g_grad)
    assert d_old < 1e-3, f"{section}: the batch path and the per-example path disagree ({d_old:.2e})"
    assert d_through < 1e-5, f"{section}: jax.grad of the batch loss is not the returned grads ({d_through:.2e})"
    return d_old, d_through


def batch_path_rows(section, problem, label, t_grad, t_old, t_through, d_old, d_through):
    """The two rows every section keeps: the batch path against the old path, and `jax.grad`
    of the batch loss against the returned `grads` (times from one `time_side_by_side`)."""
    from ._timing import row

    return [
        row(
            section,
            problem,
            f"{label} batch_value_and_grad",
            f"{label}: batch_mean of vmapped value_and_grad (old path)",
            t_grad,
            t_old,
            "speed-up (below 1: the batch path is faster)",
            rel_diff=d_old,
        ),
        row(
            section,
            problem,
            f"{label}, jax.grad of batch_value_and_grad's loss",
            f"{label} batch_value_and_grad grads",
            t_through,
            t_grad,
            "<= 1.1x",
            rel_diff=d_through,
        ),
    ]


def check_floor(estimator, g_hand, g_ref, g_ours, l_hand=None, l_ours=None):
    """`(hand_err, hand_gap)`: the hand-written floor's gradient (a dict of weight arrays)
    against the tight reference and against ours, raising when it does not solve the same
    problem (and, given the losses, when its loss differs)."""
    hand_err = max(rel(g_hand[k], getattr(g_ref, k)) for k in g_hand)
    hand_gap = max(rel(g_hand[k], getattr(g_ours, k)) for k in g_hand)
    loss_ok = l_hand is None or abs(float(l_hand - l_ours)) <= 1e-5 * abs(float(l_ours))
    if not (hand_err < 1e-2 and hand_gap < 1e-3 and loss_ok):
        loss = "" if l_hand is None else f"; loss {float(l_hand)} against {float(l_ours)}"
        raise AssertionError(
            f"the hand-written {estimator} floor disagrees (rel err {hand_err:.2e} against the reference, "
            f"{hand_gap:.2e} against nd.{estimator}{loss})"
        )
    return hand_err, hand_gap


def floor_row(section, problem, label, estimator, t_ours, t_hand, t_relax, hand_err, hand_gap):
    """The row against `estimator` written by hand for the problem (the section's floor),
    with the floor's own ratio to `nd.relax` (times from one `time_side_by_side`)."""
    from ._timing import row

    return row(
        section,
        problem,
        label,
        f"hand-written {estimator} of this network (the floor)",
        t_ours,
        t_hand,
        f"context: the floor is {t_hand / t_relax:.2f}x nd.relax",
        hand_rel_err=hand_err,
        hand_vs_ours_rel=hand_gap,
        floor_vs_relax=t_hand / t_relax,
    )


def rel(a, b):
    import numpy as np

    fa = np.concatenate(
        [np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))]
    )
    fb = np.concatenate(
        [np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array))]
    )
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


def optimistix_steady_loss(net, x, y, loss=nd.losses.squared_error, linear_solver=None):
    """The optimistix peer: `fixed_point` of the Euler map `r -> r + F(r)` (for the rate form,
    `r -> f(W r + U x + b)`, the iteration nd.relax runs) with `FixedPointIteration(1e-5,
    1e-6)`, differentiated by `ImplicitAdjoint`. Its default linear solver (AutoLinearSolver)
    materialises the Jacobian and LU-factorises it; pass `lineax.GMRES(...)` for the
    matrix-free variant."""
    import optimistix as optx

    field = peer_field(net)

    def step(r, args):
        return r + field(0.0, r, x)

    adjoint = optx.ImplicitAdjoint() if linear_solver is None else optx.ImplicitAdjoint(linear_solver=linear_solver)
    sol = optx.fixed_point(
        step,
        optx.FixedPointIteration(rtol=1e-5, atol=1e-6),
        net.init_state(x),
        max_steps=10_000,
        adjoint=adjoint,
        throw=False,
    )
    return loss(net.readout(sol.value), y)


def optimistix_peer_functions(objective_loss=nd.losses.squared_error, linear_solver=None):
    @eqx.filter_jit
    def forward(net, xs, ys):
        return jnp.mean(jax.vmap(lambda x, y: optimistix_steady_loss(net, x, y, objective_loss, linear_solver))(xs, ys))

    @eqx.filter_jit
    def grad(net, xs, ys):
        return eqx.filter_value_and_grad(forward)(net, xs, ys)

    return forward, grad
