import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd


def _point_fn(point):
    # A small estimator-driven computation per point: a gradient step's loss on a CTRNN.
    net = nd.networks.CTRNN(4, 2, 1, key=jr.PRNGKey(0))
    x = jnp.ones(2) * point["scale"]
    loss, grads, _ = nd.value_and_grad(net, x, jnp.zeros(1), objective=nd.SteadyState(), estimator=nd.EP(point["beta"]))
    return dict(loss=loss, gW=jnp.sum(grads.W))


def test_product_and_sweep_equals_a_loop():
    points = nd.sweeps.product(scale=[0.5, 1.0, 2.0], beta=[0.01, 0.1])
    assert nd.sweeps.n_points(points) == 6
    out = nd.sweeps.run(_point_fn, points)
    for i in range(6):
        one = _point_fn({k: jnp.asarray(v[i]) for k, v in points.items()})
        np.testing.assert_allclose(out["loss"][i], one["loss"], rtol=1e-12)
        np.testing.assert_allclose(out["gW"][i], one["gW"], rtol=1e-10)


def test_sixteen_seeds_compile_once():
    @eqx.debug.assert_max_traces(max_traces=1)
    def fn(point):
        key = jr.PRNGKey(point["seed"])
        net = nd.networks.CTRNN(4, 2, 1, key=key)
        return nd.value_and_grad(net, jnp.ones(2), jnp.zeros(1), objective=nd.SteadyState(), estimator=nd.RBP())[0]

    a = nd.sweeps.run(fn, nd.sweeps.product(seed=list(range(16))))
    b = nd.sweeps.run(fn, nd.sweeps.product(seed=list(range(16, 32))))  # new values, no new trace
    assert a.shape == b.shape == (16,) and not np.allclose(a, b)


def test_mismatched_axes_raise():
    with pytest.raises(ValueError, match="same length"):
        nd.sweeps.n_points({"a": np.arange(3), "b": np.arange(4)})
    with pytest.raises(ValueError, match=r"^a sweep needs at least one axis"):
        nd.sweeps.run(lambda p: p, {})


def test_four_device_sweep_equals_one_device(tmp_path):
    script = textwrap.dedent(
        """
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np
        import neurodyn as nd
        from test_sweeps import _point_fn
        assert len(jax.devices()) == 4, jax.devices()
        points = nd.sweeps.product(scale=[0.5, 1.0, 2.0], beta=[0.01, 0.03, 0.1])  # 9: padded to 12
        many = nd.sweeps.run(_point_fn, points)
        one = nd.sweeps.run(_point_fn, points, devices=jax.devices()[:1])
        assert len(many["loss"].sharding.device_set) == 4
        np.testing.assert_allclose(many["loss"], one["loss"], rtol=1e-13)
        # EP divides a difference of states by beta: rounding of a different batch layout shows at 1e-12.
        np.testing.assert_allclose(many["gW"], one["gW"], rtol=1e-9)
        print("OK", many["loss"].shape)
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK (9,)" in proc.stdout


def test_with_values_sets_array_fields_inside_a_sweep():
    def fn(point):
        est = nd.sweeps.with_values(nd.EP(), {"beta": point["beta"]})
        net = nd.networks.CTRNN(4, 2, 1, key=jr.PRNGKey(0))
        x = jnp.ones(2) * point["scale"]
        loss, grads, _ = nd.value_and_grad(net, x, jnp.zeros(1), objective=nd.SteadyState(), estimator=est)
        return dict(loss=loss, gW=jnp.sum(grads.W))

    points = nd.sweeps.product(scale=[0.5, 2.0], beta=[0.01, 0.1])
    a, b = nd.sweeps.run(fn, points), nd.sweeps.run(_point_fn, points)
    np.testing.assert_allclose(a["gW"], b["gW"], rtol=1e-12)
    assert nd.sweeps.with_values(nd.RBP(), {"adjoint.rtol": 1e-3}).adjoint.rtol == 1e-3
    with pytest.raises(ValueError, match="'variant' is a static field of EP.*grid: section"):
        nd.sweeps.with_values(nd.EP(), {"variant": 1.0})
    with pytest.raises(ValueError, match="EP has no field 'bta'"):
        nd.sweeps.with_values(nd.EP(), {"bta": 1.0})


@pytest.mark.slow  # two compilations of a small training sweep
def test_the_sweep_trains_with_the_engine_step_and_takes_another_gradient_path():
    from experiments.benchmarks.sweep import PerExampleStep
    from experiments.sweep import Config, Grid, make_problem, SweepAxes

    cfg = Config(n_data=64, steps=3, batch_size=8, sweep=SweepAxes(seed=(0,), learning_rate=(0.03,)), grid=Grid((4,)))
    points = nd.sweeps.product(seed=[0, 1], learning_rate=[0.03])
    engine = nd.sweeps.run(make_problem(cfg, 4, nd.RBP()), points)
    old = nd.sweeps.run(make_problem(cfg, 4, nd.RBP(), make_step=PerExampleStep), points)
    for k in engine:
        np.testing.assert_allclose(np.asarray(engine[k]), np.asarray(old[k]), rtol=2e-3, atol=2e-4)
