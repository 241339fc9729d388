"""experiments.compare_estimators averages independent draws of a stochastic estimator
(UORO, Tallec & Ollivier 2018): the mean of K draws is the mean of K separate runs with
keys key .. key + K - 1, and `draws` is refused where there is nothing random to draw."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from experiments import compare_estimators as ce
from helpers import assert_tree_close
from neurodyn import config as ndc


@pytest.mark.slow
def test_mean_of_draws_is_the_mean_of_separate_runs():
    net = nd.networks.CTRNN(4, 2, 2, key=jr.PRNGKey(0))
    xs, ys = jr.normal(jr.PRNGKey(1), (2, 3, 2)), jr.normal(jr.PRNGKey(2), (2, 3, 2))
    obj = nd.Trajectory(nd.losses.squared_error, np.arange(1, 4.0))
    spec = {"kind": "RTRL", "sensitivity": {"kind": "rtrl.UORO", "key": 5}}
    m = ce.measure_draws(spec, 3, "v.", net, xs, ys, obj, repeats=1)
    singles = [
        nd.batch_value_and_grad(net, xs, ys, objective=obj, estimator=nd.RTRL(nd.rtrl.UORO(k)))[1] for k in (5, 6, 7)
    ]
    assert_tree_close(m["grads"], jax.tree.map(lambda *a: sum(a) / 3, *singles), rtol=1e-10, atol=1e-12)
    assert_tree_close(jax.tree.map(lambda a: a[1], m["draw_grads"]), singles[1], rtol=1e-10, atol=1e-12)
    assert jnp.isfinite(m["time_s"])


def test_draws_need_a_random_sensitivity():
    part = ce.Part(variants={"bptt": {"kind": "BPTT"}, "uoro": {"kind": "RTRL", "sensitivity": {"kind": "rtrl.UORO"}}})
    ce._check_draws(part, "uoro", 4, "trajectory.draws.uoro")
    with pytest.raises(ndc.ConfigError, match="only an estimator with a random sensitivity"):
        ce._check_draws(part, "bptt", 4, "trajectory.draws.bptt")
    with pytest.raises(ndc.ConfigError, match="out of range"):
        ce._check_draws(part, "uoro", 0, "trajectory.draws.uoro")
    with pytest.raises(ndc.ConfigError, match="not a variant"):
        ce._check_draws(part, "rtrl", 2, "trajectory.draws.rtrl")
