"""`nd.config.optimizer`'s gradient clipping and learning-rate schedules, against their
formulas written out here (not optax's), and the errors that name a schedule that cannot run."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import neurodyn as nd


def _updates(opt, grads, steps):
    """The update of each of `steps` optimiser steps, every step on the same `grads`."""
    state = opt.init(jax.tree.map(jnp.zeros_like, grads))
    out = []
    for _ in range(steps):
        u, state = opt.update(grads, state)
        out.append(u)
    return out


def test_clip_norm_rescales_only_a_gradient_whose_global_norm_exceeds_it():
    opt = nd.config.optimizer("sgd", 0.1, momentum=0, clip_norm=1.0)
    # The norm is global, over every leaf: (3, 4) split over two leaves has norm 5.
    (big,) = _updates(opt, {"a": jnp.array([3.0]), "b": jnp.array([4.0])}, 1)
    np.testing.assert_allclose([big["a"][0], big["b"][0]], [-0.1 * 0.6, -0.1 * 0.8], rtol=1e-6)
    (small,) = _updates(opt, {"a": jnp.array([0.3]), "b": jnp.array([0.4])}, 1)
    np.testing.assert_allclose([small["a"][0], small["b"][0]], [-0.03, -0.04], rtol=1e-6)
    # Without clip_norm the large gradient passes as it is.
    (raw,) = _updates(nd.config.optimizer("sgd", 0.1, momentum=0), {"a": jnp.array([3.0]), "b": jnp.array([4.0])}, 1)
    np.testing.assert_allclose([raw["a"][0], raw["b"][0]], [-0.3, -0.4], rtol=1e-6)


def _expected_rate(k, lr, schedule, total, warmup, final):
    if k < warmup:
        return lr * k / warmup
    if schedule == "constant":
        return lr
    end = final * lr
    frac = min(k - warmup, total - warmup) / (total - warmup)
    if schedule == "cosine":
        return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac))
    return lr + (end - lr) * frac


@pytest.mark.parametrize(
    "schedule,warmup,final",
    [("cosine", 0, 0.0), ("cosine", 3, 0.1), ("linear", 0, 0.0), ("linear", 4, 0.25), ("constant", 5, 0.0)],
)
def test_schedules_follow_their_formulas(schedule, warmup, final):
    lr, total = 0.5, 12
    opt = nd.config.optimizer(
        "sgd", lr, momentum=0, schedule=schedule, total_steps=total, warmup_steps=warmup, final_fraction=final
    )
    # SGD on a unit gradient: each step's update is minus that step's learning rate.
    got = [-float(u["w"][0]) for u in _updates(opt, {"w": jnp.ones(1)}, total + 3)]
    want = [_expected_rate(k, lr, schedule, total, warmup, final) for k in range(total + 3)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_the_default_is_the_plain_optimiser_with_no_step_count():
    """A constant rate without warm-up builds exactly the optimiser it did before schedules:
    the same state, so checkpoints written before them still load."""
    params = {"w": jnp.ones(3)}
    for name, plain in (("sgd", optax.sgd(0.1, momentum=0.9)), ("adam", optax.adam(0.1))):
        ours = nd.config.optimizer(name, 0.1)
        assert jax.tree.structure(ours.init(params)) == jax.tree.structure(plain.init(params))


def test_a_swept_learning_rate_runs_its_schedule_under_vmap():
    def first_two_updates(lr):
        opt = nd.config.optimizer("sgd", lr, momentum=0, schedule="cosine", total_steps=4, warmup_steps=1)
        return jnp.stack([-u["w"][0] for u in _updates(opt, {"w": jnp.ones(1)}, 3)])

    got = jax.jit(jax.vmap(first_two_updates))(jnp.array([0.1, 0.4]))
    for row, lr in zip(np.asarray(got), (0.1, 0.4)):
        np.testing.assert_allclose(row, [_expected_rate(k, lr, "cosine", 4, 1, 0.0) for k in range(3)], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(schedule="cosin"), r"unknown learning-rate schedule 'cosin'; did you mean 'cosine'"),
        (dict(schedule="cosine"), r"the 'cosine' schedule decays over the run's optimiser steps: pass total_steps"),
        (dict(schedule="linear", total_steps=10, warmup_steps=10), r"warmup_steps \(10\) must be smaller"),
        (dict(schedule="cosine", total_steps=10, final_fraction=1.5), r"final_fraction must lie in \[0, 1\]"),
        (dict(warmup_steps=-1), r"warmup_steps must be an integer >= 0"),
        (dict(clip_norm=0.0), r"clip_norm must be a number > 0"),
        (dict(clip_norm=float("nan")), r"clip_norm must be a number > 0"),
    ],
)
def test_a_schedule_or_clip_that_cannot_run_is_named(kwargs, message):
    # A ConfigError, so that an experiment's CLI prints it as one line; a ValueError for Python callers.
    with pytest.raises(nd.config.ConfigError, match=message):
        nd.config.optimizer("adam", 1e-3, **kwargs)
    assert issubclass(nd.config.ConfigError, ValueError)


def test_optimizer_from_reads_a_configs_fields_and_names_its_section():
    @dataclasses.dataclass(frozen=True)
    class Section:
        clip_norm: float | None = nd.config.clip_norm_field()
        schedule: str = nd.config.schedule_field()
        warmup_steps: int = nd.config.warmup_steps_field()
        final_fraction: float = nd.config.final_fraction_field()

    o = Section(clip_norm=1.0, schedule="linear", warmup_steps=2, final_fraction=0.5)
    ours = nd.config.optimizer_from(o, "sgd", 0.1, total_steps=6, momentum=0.0)
    direct = nd.config.optimizer(
        "sgd", 0.1, momentum=0.0, clip_norm=1.0, schedule="linear", total_steps=6, warmup_steps=2, final_fraction=0.5
    )
    g = {"w": jnp.array([3.0, 4.0])}  # norm 5: clipped to 1
    params = {"w": jnp.zeros(2)}
    s1, s2 = ours.init(params), direct.init(params)
    for _ in range(5):
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = direct.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=0, atol=0)
    # step 4 of 6 (after a 2-step warm-up, halfway down to half the peak): 0.1 * 0.75 * the unit gradient
    np.testing.assert_allclose(u1["w"], -0.1 * 0.75 * np.array([0.6, 0.8]), rtol=1e-6)
    with pytest.raises(nd.config.ConfigError, match=r"^optimizer: warmup_steps \(2\) must be smaller"):
        nd.config.optimizer_from(o, "sgd", 0.1, total_steps=2, where="optimizer")


def test_every_experiment_declares_the_optimiser_options_alike():
    from experiments import online_rtrl, sequence_task, sweep, train

    sections = [train.Optimizer, sweep.Optimizer, sequence_task.Config, online_rtrl.Config]
    names = ("clip_norm", "schedule", "warmup_steps", "final_fraction")

    def spec(f):  # the default, help and bounds; a `choices` callable by the values it gives
        return (f.default, sorted((k, repr(v() if callable(v) else v)) for k, v in f.metadata.items()))

    for name in names:
        declared = [spec({f.name: f for f in dataclasses.fields(c)}[name]) for c in sections]
        assert all(d == declared[0] for d in declared), (name, declared)
        assert declared[0][1], name  # the metadata is there to compare


def test_the_training_step_clips_the_batch_gradient():
    import equinox as eqx
    import jax.random as jr

    net = nd.networks.CTRNN(n=6, n_in=3, n_out=2, key=jr.PRNGKey(0))
    xs, ys = jr.normal(jr.PRNGKey(1), (4, 3)), jr.normal(jr.PRNGKey(2), (4, 2))
    objective, estimator = nd.SteadyState(), nd.RBP()
    _, g, _ = nd.batch_value_and_grad(net, xs, ys, objective=objective, estimator=estimator)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    g = eqx.filter(g, eqx.is_inexact_array)
    norm = math.sqrt(sum(float(jnp.sum(leaf**2)) for leaf in jax.tree.leaves(g)))
    opt = nd.config.optimizer("sgd", 0.1, momentum=0, clip_norm=norm / 2)
    step = nd.training.make_train_step(objective, estimator, opt)
    new, _, _, _ = step(params, opt.init(params), static, xs, ys)
    # Halved to the clip norm: w - 0.1 * g * (norm / 2) / norm.
    want = jax.tree.map(lambda p, d: p - 0.1 * 0.5 * d, params, g)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
