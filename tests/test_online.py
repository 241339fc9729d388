"""Online learning with RTRL (`nd.online.fit_online`) and the sequence tasks it learns."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import neurodyn as nd
from helpers import assert_tree_close, EULER1


def _params(net):
    return eqx.filter(net, eqx.is_inexact_array)


def test_one_update_at_the_end_is_one_gradient_step_with_the_trajectory_gradient(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    T, lr = 6, 0.1
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    w = jnp.linspace(0.5, 1.0, T)
    trained, losses = nd.online.fit_online(net, xs, ys, optimizer=optax.sgd(lr), weights=w, update_every=T)

    # Reference: reverse mode through nd.rollout on the same Euler dt = 1 grid.
    def loss_fn(net):
        rs, _ = nd.rollout(net, xs, np.arange(1, T + 1), **EULER1)
        return jnp.sum(w * jax.vmap(nd.losses.squared_error)(rs, ys))

    loss, grads = eqx.filter_value_and_grad(loss_fn)(net)
    expected = jax.tree.map(lambda p, g: p - lr * g, _params(net), grads)
    assert_tree_close(_params(trained), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(losses), loss, rtol=1e-12)


def test_sensitivities_carry_over_the_updates(getkey):
    # A test-only reference of real-time recurrent learning, written with dense Jacobians of
    # one Euler dt = 1 step: p <- (d step/dr) p + d step/dw, an SGD update every 2 inputs
    # from the gradient accumulated since the last one, state and p kept across updates.
    net = nd.networks.CTRNN(4, 2, 1, key=getkey())
    T, lr, every = 6, 0.2, 2
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 1))
    trained, losses = nd.online.fit_online(net, xs, ys, optimizer=optax.sgd(lr), update_every=every)

    params, static = eqx.partition(net, eqx.is_inexact_array)

    def step(params, r, x):
        return r + eqx.combine(params, static)(0.0, r, x)

    def loss_at(params, r, y):
        return nd.losses.squared_error(eqx.combine(params, static).readout(r), y)

    @jax.jit
    def advance(params, r, p, acc, x, y):
        Jr = jax.jacfwd(step, argnums=1)(params, r, x)
        Jw = jax.jacfwd(step, argnums=0)(params, r, x)
        p = jax.tree.map(lambda a, d: jnp.tensordot(Jr, a, axes=1) + d, p, Jw)
        r = step(params, r, x)
        g_direct, g_r = jax.grad(loss_at, argnums=(0, 1))(params, r, y)
        acc = jax.tree.map(lambda a, gd, pk: a + gd + jnp.tensordot(g_r, pk, axes=1), acc, g_direct, p)
        return r, p, acc, loss_at(params, r, y)

    r = net.init_state(xs[0])
    p = jax.tree.map(lambda a: jnp.zeros((4,) + a.shape), params)
    acc = jax.tree.map(jnp.zeros_like, params)
    ref_losses = []
    for k in range(T):
        r, p, acc, loss_k = advance(params, r, p, acc, xs[k], ys[k])
        ref_losses.append(loss_k)
        if (k + 1) % every == 0:
            params = jax.tree.map(lambda w, g: w - lr * g, params, acc)
            acc = jax.tree.map(jnp.zeros_like, acc)
    np.testing.assert_allclose(losses, jnp.stack(ref_losses), rtol=1e-10)
    assert_tree_close(_params(trained), params, rtol=1e-10, atol=1e-12)


def test_resets_make_episodes_independent(getkey):
    # With the state reset at every episode start and one update at the end, the update is
    # one SGD step with the sum of the episodes' trajectory gradients.
    net = nd.networks.CTRNN(4, 2, 1, key=getkey())
    E, Tep, lr = 3, 4, 0.1
    xs, ys, ws = jax.vmap(lambda k: nd.data.sequences.adding_problem(k, T=Tep))(jr.split(getkey(), E))
    resets = jnp.zeros((E, Tep), bool).at[:, 0].set(True)
    trained, _ = nd.online.fit_online(
        net,
        xs.reshape(-1, 2),
        ys.reshape(-1, 1),
        weights=ws.reshape(-1),
        resets=resets.reshape(-1),
        optimizer=optax.sgd(lr),
        update_every=E * Tep,
    )
    obj = lambda w: nd.Trajectory(ts=np.arange(1, Tep + 1), weights=w)  # noqa: E731
    grads = [
        nd.value_and_grad(net, xs[e], ys[e], objective=obj(ws[e]), estimator=nd.RTRL(), **EULER1)[1] for e in range(E)
    ]
    total = jax.tree.map(lambda *g: sum(g), *grads)
    expected = jax.tree.map(lambda p, g: p - lr * g, _params(net), total)
    assert_tree_close(_params(trained), expected, rtol=1e-10, atol=1e-12)


# The stated online-learning result (README and configs/online_rtrl.yaml): an 8-unit student
# CTRNN mimics an 8-unit teacher RNN (gain 0.9) on one 3000-step stream with Adam(3e-3),
# updated at every step. Predicting the mean gives var(y)/2 = 0.038; the running loss falls
# from about 0.024 (first 300 steps) to about 0.0026 (last 300), a few seconds on 2 CPU cores.
def teacher_stream():
    teacher = nd.networks.CTRNN(8, 2, 1, gain=0.9, key=jr.PRNGKey(0))
    return nd.data.sequences.teacher_rnn(jr.PRNGKey(2), teacher, T=3000)


def test_online_rtrl_learns_to_mimic_a_teacher():
    student = nd.networks.CTRNN(8, 2, 1, gain=0.5, key=jr.PRNGKey(1))
    xs, ys, _ = teacher_stream()
    _, losses = eqx.filter_jit(nd.online.fit_online)(student, xs, ys, optimizer=optax.adam(3e-3))
    first, last = float(jnp.mean(losses[:300])), float(jnp.mean(losses[-300:]))
    chance = float(jnp.var(ys)) / 2
    print(f"online RTRL, teacher mimic: running loss {first:.4f} -> {last:.4f} (mean predictor {chance:.4f})")
    assert last < 0.005 and last < 0.2 * first and last < 0.15 * chance


def test_online_learning_vmaps_over_seeds(getkey):
    teacher = nd.networks.CTRNN(4, 2, 1, gain=0.9, key=getkey())
    keys = jr.split(getkey(), 3)
    students = eqx.filter_vmap(lambda k: nd.networks.CTRNN(4, 2, 1, key=k))(keys)
    xs, ys, _ = jax.vmap(lambda k: nd.data.sequences.teacher_rnn(k, teacher, T=20))(keys)
    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def run(student, xs, ys):
        return nd.online.fit_online(student, xs, ys, optimizer=opt, update_every=2, sensitivity=nd.rtrl.Diagonal())

    trained, losses = eqx.filter_vmap(run)(students, xs, ys)
    assert losses.shape == (3, 20)
    for i in range(3):
        student_i = jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, students)
        t_i, l_i = run(student_i, xs[i], ys[i])
        np.testing.assert_allclose(losses[i], l_i, rtol=1e-10)
        assert_tree_close(jax.tree.map(lambda a: a[i], _params(trained)), _params(t_i), rtol=1e-10, atol=1e-12)


def test_bad_online_arguments_are_refused(getkey):
    net = nd.networks.CTRNN(3, 2, 1, key=getkey())
    xs, ys = jnp.zeros((4, 2)), jnp.zeros((4, 1))
    with pytest.raises(ValueError, match="sensitivity must be nd.rtrl.Exact"):
        nd.online.fit_online(net, xs, ys, optimizer=optax.sgd(0.1), sensitivity="exact")
    with pytest.raises(ValueError, match="update_every and steps_per_input must be positive"):
        nd.online.fit_online(net, xs, ys, optimizer=optax.sgd(0.1), update_every=0)
    with pytest.raises(ValueError, match=r"ys has shape \(4, 2\); expected \(T, n_out\)"):
        nd.online.fit_online(net, xs, jnp.zeros((4, 2)), optimizer=optax.sgd(0.1))


# ---------------------------------------------------------------------------------------
# Sequence tasks
# ---------------------------------------------------------------------------------------


def test_adding_problem():
    xs, ys, w = jax.jit(jax.vmap(lambda k: nd.data.sequences.adding_problem(k, T=10)))(jr.split(jr.PRNGKey(0), 64))
    assert xs.shape == (64, 10, 2) and ys.shape == (64, 10, 1) and w.shape == (64, 10)
    marks = xs[..., 1]
    assert bool(jnp.all(marks.sum(1) == 2)) and bool(jnp.all(marks[:, :5].sum(1) == 1))
    np.testing.assert_allclose(ys[:, -1, 0], jnp.sum(xs[..., 0] * marks, axis=1))
    assert bool(jnp.all(w[:, -1] == 1)) and bool(jnp.all(w[:, :-1] == 0))


def test_copy_task():
    length, n_symbols, delay = 3, 4, 2
    xs, ys, w = nd.data.sequences.copy_task(jr.PRNGKey(1), length, n_symbols, delay)
    T = 2 * length + delay + 1
    assert xs.shape == (T, n_symbols + 1) and ys.shape == (T, n_symbols) and w.shape == (T,)
    np.testing.assert_array_equal(ys[T - length :], xs[:length, :n_symbols])
    assert float(xs[length + delay, n_symbols]) == 1 and float(w.sum()) == length


def test_delayed_xor():
    xs, ys, w = jax.jit(jax.vmap(lambda k: nd.data.sequences.delayed_xor(k, delay=3)))(jr.split(jr.PRNGKey(2), 32))
    a, b = xs[:, 0, 0], xs[:, 4, 0]
    assert bool(jnp.all(jnp.abs(a) == 1)) and bool(jnp.all(jnp.abs(b) == 1))
    np.testing.assert_array_equal(ys[:, -1, 0], -a * b)
    assert xs.shape == (32, 8, 1) and w.shape == (32, 8)


def test_teacher_stream_is_the_teachers_euler_rollout():
    teacher = nd.networks.CTRNN(4, 2, 1, key=jr.PRNGKey(3))
    xs, ys, w = nd.data.sequences.teacher_rnn(jr.PRNGKey(4), teacher, T=7)
    ref, _ = nd.rollout(teacher, xs, np.arange(1, 8), **EULER1)
    np.testing.assert_allclose(ys, ref, rtol=1e-12)
    assert w.shape == (7,)


@pytest.mark.slow  # two compilations of the online scan, ~10 s on the shared 2 cores
def test_a_stream_in_pieces_is_the_whole_stream(getkey):
    # online_init + online_steps over pieces, each continuing the last carry (what a resumed
    # experiment does between checkpoints), is fit_online over the whole stream.
    net = nd.networks.CTRNN(3, 2, 1, key=getkey())
    xs, ys = jr.normal(getkey(), (9, 2)), jr.normal(getkey(), (9, 1))
    kw = dict(optimizer=optax.adam(1e-2), update_every=2, sensitivity=nd.rtrl.SnAp1())
    whole, losses = eqx.filter_jit(nd.online.fit_online)(net, xs, ys, **kw)
    carry, pieces = nd.online.online_init(net, xs[0], optimizer=kw["optimizer"], sensitivity=kw["sensitivity"]), []
    steps = eqx.filter_jit(nd.online.online_steps)  # one compilation for the three pieces
    for a in (0, 3, 6):  # a piece ends between two updates
        carry, piece = steps(net, carry, xs[a : a + 3], ys[a : a + 3], **kw)
        pieces.append(piece)
    assert_tree_close(carry[0], _params(whole), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.concatenate(pieces), losses, rtol=1e-12, atol=1e-14)
    assert int(carry[-1]) == 9
