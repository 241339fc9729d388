"""`nd.batch_value_and_grad`: the gradient of a batch in one reverse pass equals the
(weighted) mean of the one-example gradients for every estimator and network family, under
`jit`, an outer `vmap` and `jax.grad`; steady-state BPTT's stored-states path is exact."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import assert_tree_close, dense_ift_grad, small_networks
from neurodyn._misc import tree_cast


NETWORKS = small_networks(jr.PRNGKey(4321))
BASE = ("ctrnn-rate", "ctrnn-current", "hopfield", "layered")
B = 4
T = 3
TS = np.arange(1.0, T + 1)


def _estimators(energy: bool):
    ests = [("bptt", nd.BPTT()), ("rbp", nd.RBP()), ("rtrl", nd.RTRL())]
    if energy:
        ests.append(("ep", nd.EP(beta=1e-3)))
    return ests


def _cases():
    # Unweighted on every family; weighted on the Hopfield network (every estimator serves
    # it) in the default suite, everywhere in the slow step.
    out = []
    for n, net in NETWORKS:
        energy = isinstance(net, nd.networks.AbstractEnergyNetwork)
        for e, est in _estimators(energy):
            for weighted in (False, True):
                # The default suite: every estimator on the Hopfield network (both weightings)
                # and BPTT/RBP on the rate CTRNN; the rest in CI's slow step (time budget).
                fast = n == "hopfield" or (n == "ctrnn-rate" and e in ("bptt", "rbp") and not weighted)
                out.append(
                    pytest.param(
                        e,
                        n,
                        est,
                        net,
                        weighted,
                        id=f"{e}-{n}-{'weighted' if weighted else 'mean'}",
                        marks=() if fast else pytest.mark.slow,
                    )
                )
    return out


def _batch(net, key, T=None):
    kx, ky = jr.split(key)
    lead = (B,) if T is None else (B, T)
    return jr.uniform(kx, lead + (net.n_in,)), jr.normal(ky, lead + (net.n_out,))


def _mean_of_examples(net, xs, ys, weights, **kw):
    losses, grads, info = jax.vmap(lambda x, y: nd.value_and_grad(net, x, y, **kw))(xs, ys)
    w = jnp.ones((B,), losses.dtype) / B if weights is None else weights / jnp.sum(weights)
    return jnp.sum(w * losses), jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), grads), info


WEIGHTS = jnp.asarray([1.0, 0.0, 2.0, 0.5])


@pytest.mark.parametrize("est_name,net_name,est,net,weighted", _cases())
def test_batch_equals_mean_of_examples_steady_state(est_name, net_name, est, net, weighted, getkey):
    xs, ys = _batch(net, getkey())
    weights = WEIGHTS if weighted else None
    kw = dict(objective=nd.SteadyState(), estimator=est)
    loss, grads, info = eqx.filter_jit(lambda n: nd.batch_value_and_grad(n, xs, ys, weights=weights, **kw))(net)
    ref_loss, ref_grads, ref_info = _mean_of_examples(net, xs, ys, weights, **kw)
    assert bool(jnp.all(info["converged"])) and info["converged"].shape == (B,)
    # A zero-weight example is replaced by zeros (a padded slot), so only the others compare.
    kept = np.ones(B, bool) if weights is None else np.asarray(weights > 0)
    np.testing.assert_array_equal(np.asarray(info["steps"])[kept], np.asarray(ref_info["steps"])[kept])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
    assert_tree_close(grads, ref_grads, rtol=1e-9, atol=1e-12, what=f"{est_name} {net_name}")
    # jax.grad of the returned loss is the estimator's gradient (the batch custom VJP).
    g = eqx.filter_grad(lambda n: 3.0 * nd.batch_value_and_grad(n, xs, ys, weights=weights, **kw)[0])(net)
    assert_tree_close(g, jax.tree.map(lambda a: 3.0 * a, grads), rtol=1e-12, atol=1e-14, what="jax.grad")


@pytest.mark.parametrize(
    "name,est,weighted",
    [
        ("bptt", nd.BPTT(), True),
        ("rtrl", nd.RTRL(), True),
        pytest.param("bptt", nd.BPTT(), False, marks=pytest.mark.slow),
        pytest.param("bptt-truncated", nd.BPTT(truncation=2), True, marks=pytest.mark.slow),
        pytest.param("bptt-checkpointed", nd.BPTT(checkpoints=2), False, marks=pytest.mark.slow),
    ],
)
def test_batch_equals_mean_of_examples_trajectory(name, est, weighted, getkey):
    net = dict(NETWORKS)["ctrnn-current"]
    xs, ys = _batch(net, getkey(), T=T)
    weights = WEIGHTS if weighted else None
    kw = dict(objective=nd.Trajectory(ts=TS), estimator=est, dt0=0.5)
    loss, grads, info = nd.batch_value_and_grad(net, xs, ys, weights=weights, **kw)
    ref_loss, ref_grads, _ = _mean_of_examples(net, xs, ys, weights, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert_tree_close(grads, ref_grads, rtol=1e-9, atol=1e-12, what=name)
    assert info["loss"].shape == (B,) and bool(jnp.all(info["converged"]))


def test_stored_steady_state_bptt_is_exact_and_matches_its_segments(getkey):
    """The stored-states path against the dense implicit-function-theorem gradient of the
    converged steady state, and against its segmented form, which relaxes again from each
    segment's first state (`stored_steps` smaller than the steps taken): 2 steps per segment,
    and 12 (a segment that is not a whole number of the backward pass's 8-step chunks)."""
    net = dict(NETWORKS)["ctrnn-rate"]
    xs, ys = _batch(net, getkey())
    kw = dict(objective=nd.SteadyState(), rtol=1e-12, atol=1e-13)
    loss, grads, info = nd.batch_value_and_grad(net, xs, ys, estimator=nd.BPTT(), **kw)
    # Past the first two buffer sizes (8 and 32 steps, the third has room for 128); the
    # backward pass works in chunks of 8 stored steps and these relaxations span several,
    # the examples stopping at different steps (inside a chunk, not at its edge).
    steps = np.asarray(info["steps"])
    assert 32 < steps.max() <= 128 and len(set(steps.tolist())) > 1 and np.any(steps % 8 != 0), steps
    refs = [dense_ift_grad(net, x, y) for x, y in zip(xs, ys)]
    ref = jax.tree.map(lambda *g: sum(g) / B, *[r[1] for r in refs])
    # BPTT through a converged relaxation is the implicit gradient up to the contraction's tail.
    assert_tree_close(grads, ref, rtol=1e-8, atol=1e-10, what="stored vs dense IFT")
    for stored in (2, 12):
        loss_s, grads_s, info_s = nd.batch_value_and_grad(net, xs, ys, estimator=nd.BPTT(stored_steps=stored), **kw)
        np.testing.assert_array_equal(info_s["steps"], info["steps"])
        np.testing.assert_allclose(loss_s, loss, rtol=1e-13)
        assert_tree_close(grads_s, grads, rtol=1e-10, atol=1e-13, what=f"segments of {stored} vs stored")


def test_segmented_steady_state_bptt_against_one_example_loops(getkey):
    """Relaxations longer than `stored_steps` (segments of 12 steps, the examples stopping
    in different segments, and inside them; inputs of different sizes relax at different
    speeds), in float32 as trained: the batch gradient equals the mean of the one-example
    gradients (reverse mode through the checkpointed loop), jit-compiled, and `jax.grad`
    of the returned loss gives it."""
    net = tree_cast(dict(NETWORKS)["hopfield"], jnp.float32)
    xs, ys = (a.astype(jnp.float32) for a in _batch(net, getkey()))
    xs = xs * jnp.asarray([0.0, 2.0, 8.0, 32.0], jnp.float32)[:, None]
    # Loose tolerances: a step more or less at the end moves the gradient well beyond
    # rounding (at a tight tolerance the extra steps would sit at the fixed point).
    kw = dict(objective=nd.SteadyState(), dt0=0.1, rtol=1e-2, atol=1e-3)
    est = nd.BPTT(stored_steps=12)

    @eqx.filter_jit
    def batch(net):
        return nd.batch_value_and_grad(net, xs, ys, estimator=est, **kw)

    loss, grads, info = batch(net)
    steps = np.asarray(info["steps"])
    assert bool(jnp.all(info["converged"])) and steps.min() > 12 and len(set((steps // 12).tolist())) > 1, steps
    ref_loss, ref_grads, ref_info = _mean_of_examples(net, xs, ys, None, estimator=est, **kw)
    np.testing.assert_array_equal(ref_info["steps"], steps)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_tree_close(grads, ref_grads, rtol=1e-4, atol=1e-6, what="segmented batch vs one-example loops")
    through = eqx.filter_grad(lambda m: nd.batch_value_and_grad(m, xs, ys, estimator=est, **kw)[0])(net)
    assert_tree_close(through, grads, rtol=1e-6, atol=1e-8, what="jax.grad of the loss")


@pytest.mark.slow  # the stored path stays in the default suite through the test above
@pytest.mark.parametrize("name", ["hopfield", "ctrnn-current", "layered"])
def test_stored_steady_state_bptt_continues_into_larger_buffers(getkey, name):
    """Relaxations that outgrow the first buffers (8 stored steps) and go on in the next
    ones, with a two-stage solver (each step's stored linearisation covers both stages):
    the same gradient as the segmented form (`stored_steps=2`, two steps per segment)."""
    import diffrax

    net = dict(NETWORKS)[name]
    xs, ys = _batch(net, getkey())
    kw = dict(objective=nd.SteadyState(), solver=diffrax.Heun(), dt0=0.8, rtol=1e-3, atol=1e-4)
    loss, grads, info = nd.batch_value_and_grad(net, xs, ys, estimator=nd.BPTT(), **kw)
    steps = np.asarray(info["steps"])
    assert bool(jnp.all(info["converged"])) and 8 < steps.max() <= 16, steps
    loss_fb, grads_fb, info_fb = nd.batch_value_and_grad(net, xs, ys, estimator=nd.BPTT(stored_steps=2), **kw)
    np.testing.assert_array_equal(info_fb["steps"], steps)
    np.testing.assert_allclose(loss, loss_fb, rtol=1e-13)
    assert_tree_close(grads_fb, grads, rtol=1e-10, atol=1e-13, what="fallback vs stored")


def test_outer_vmap_over_a_sweep_axis(getkey):
    """A vmap over EP's beta and over a stack of networks on top of the batch call."""
    net = dict(NETWORKS)["hopfield"]
    xs, ys = _batch(net, getkey())
    betas = jnp.asarray([1e-3, 2e-3])

    def one(beta):
        est = nd.sweeps.with_values(nd.EP(), {"beta": beta})
        return nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=est)[1]

    swept = jax.vmap(one)(betas)
    for i, b in enumerate(betas):
        g = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=nd.EP(float(b)))[1]
        assert_tree_close(jax.tree.map(lambda a: a[i], swept), g, rtol=1e-9, atol=1e-12, what=f"beta {b}")

    keys = jr.split(getkey(), 2)
    nets = eqx.filter_vmap(lambda k: nd.networks.Hopfield(3, 5, 2, key=k))(keys)
    params, static = eqx.partition(nets, eqx.is_inexact_array)

    def per_net(p):
        return nd.batch_value_and_grad(eqx.combine(p, static), xs, ys, objective=nd.SteadyState(), estimator=nd.RBP())[
            :2
        ]

    losses, grads = jax.vmap(per_net)(params)
    for i, k in enumerate(keys):
        loss_i, g_i, _ = nd.batch_value_and_grad(
            nd.networks.Hopfield(3, 5, 2, key=k), xs, ys, objective=nd.SteadyState(), estimator=nd.RBP()
        )
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-12)
        assert_tree_close(jax.tree.map(lambda a: a[i], grads), g_i, rtol=1e-9, atol=1e-12, what=f"net {i}")


def _is(results, member):
    """Per example: is the batched `info["result"]` this member?"""
    return jax.vmap(lambda r: r == member)(results)


def test_a_non_finite_example_is_never_successful(getkey):
    net = dict(NETWORKS)["ctrnn-rate"]
    xs, ys = _batch(net, getkey())
    ys = ys.at[2, 0].set(jnp.nan)
    _, _, info = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=nd.RBP())
    assert not bool(info["converged"][2])
    assert not bool(_is(info["result"], nd.RESULTS.successful)[2])  # (the adjoint solve already fails on it)
    # The batch gradient is NaN, so no example may claim success: the others say why.
    assert not bool(jnp.any(info["converged"]))
    assert bool(jnp.all(_is(info["result"], nd.RESULTS.nonfinite_gradient)[jnp.asarray([0, 1, 3])]))
    # Masking the broken example with a zero weight keeps its NaN out of loss and gradient.
    loss, grads, _ = nd.batch_value_and_grad(
        net, xs, ys, objective=nd.SteadyState(), estimator=nd.RBP(), weights=jnp.asarray([1.0, 1.0, 0.0, 1.0])
    )
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "xs_shape,ys_shape,weights,match",
    [
        ((4, 3), (3, 2), None, "leading axes differ"),
        ((3,), (2,), None, "leading axes differ|expects"),
        ((4, 3), (4, 2), jnp.ones(3), r"weights has shape \(3,\); expected \(4,\)"),
        ((4, 3), (4, 2), jnp.asarray([1.0, -1.0, 1.0, 1.0]), "weights must be finite and >= 0"),
        ((0, 3), (0, 2), None, "empty batch"),
    ],
)
def test_bad_batches_are_named(xs_shape, ys_shape, weights, match):
    net = dict(NETWORKS)["ctrnn-rate"]
    with pytest.raises(ValueError, match=match):
        nd.batch_value_and_grad(
            net, jnp.zeros(xs_shape), jnp.zeros(ys_shape), objective=nd.SteadyState(), weights=weights
        )


def test_differentiating_the_returned_grads_is_refused(getkey):
    net = dict(NETWORKS)["ctrnn-rate"]
    xs, ys = _batch(net, getkey())
    with pytest.raises(ValueError, match="first-order"):
        jax.grad(
            lambda n: jnp.sum(nd.batch_value_and_grad(n, xs, ys, objective=nd.SteadyState(), estimator=nd.RBP())[1].W)
        )(net)


def test_a_checked_signature_still_refuses_bad_data(getkey):
    # The one-example checks of a batch are cached per signature (network structure,
    # objective, data shapes and dtypes) once they pass: the cached call gives the first
    # call's result, a batch of another shape is still refused, and class indices are
    # checked by value on every call.
    net = dict(NETWORKS)["ctrnn-rate"]
    xs, ys = _batch(net, getkey())
    kw = dict(objective=nd.SteadyState(), estimator=nd.RBP())
    first = nd.batch_value_and_grad(net, xs, ys, **kw)
    again = nd.batch_value_and_grad(net, xs, ys, **kw)
    assert_tree_close(again[1], first[1], rtol=0, atol=0, what="cached check")
    with pytest.raises(ValueError, match="expects"):
        nd.batch_value_and_grad(net, xs[:, :-1], ys, **kw)
    with pytest.raises(ValueError, match="must match the readout"):
        nd.batch_value_and_grad(net, xs, ys[:, :-1], **kw)
    ce = dict(objective=nd.SteadyState(nd.losses.softmax_cross_entropy), estimator=nd.RBP())
    labels = jnp.arange(B) % net.n_out
    nd.batch_value_and_grad(net, xs, labels, **ce)
    with pytest.raises(ValueError, match="class index"):
        nd.batch_value_and_grad(net, xs, labels.at[1].set(net.n_out), **ce)


def test_bounded_cache_computes_once_per_key_and_starts_over_when_full():
    from neurodyn._misc import BoundedCache, cache_key

    calls = []

    def compute(v):
        return lambda: calls.append(v) or v

    cache = BoundedCache(2)
    assert cache.get("a", compute(1)) == 1
    assert cache.get("a", compute(99)) == 1  # cached: not recomputed
    assert cache.get("b", compute(2)) == 2
    assert cache.get("c", compute(3)) == 3  # full: starts over
    assert cache.get("a", compute(4)) == 4
    assert calls == [1, 2, 3, 4]
    # An unhashable part gives no key, and a value without a key is computed every time.
    assert cache_key(lambda: ("x", [1, 2])) is None
    assert cache_key(lambda: ("x", (1, 2))) == ("x", (1, 2))
    assert cache.get(None, compute(5)) == 5 and cache.get(None, compute(6)) == 6
    assert calls == [1, 2, 3, 4, 5, 6]
