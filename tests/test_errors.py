"""Bad input gets a clear error naming the problem and the fix."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd


@pytest.fixture
def net(getkey):
    return nd.networks.CTRNN(6, 3, 2, key=getkey())


def test_wrong_input_shape_names_the_shapes(net):
    with pytest.raises(ValueError, match=r"x has shape \(4,\) but CTRNN with n_in=3 expects \(n_in,\)=\(3,\)"):
        nd.value_and_grad(net, jnp.ones(4), jnp.zeros(2), objective=nd.SteadyState())


def test_batched_input_suggests_vmap(net):
    with pytest.raises(ValueError, match="use jax.vmap over the batch"):
        nd.relax(net, jnp.ones((5, 3)))


def test_wrong_target_shape_names_the_shapes(net):
    with pytest.raises(ValueError, match=r"y has shape \(3,\) but the readout of CTRNN gives \(2,\)"):
        nd.value_and_grad(net, jnp.ones(3), jnp.zeros(3), objective=nd.SteadyState())


def test_integer_target_needs_cross_entropy(net):
    with pytest.raises(ValueError, match="one-hot encode it"):
        nd.value_and_grad(net, jnp.ones(3), jnp.array(1), objective=nd.SteadyState())
    loss, _, _ = nd.value_and_grad(
        net, jnp.ones(3), jnp.array(1), objective=nd.SteadyState(nd.losses.softmax_cross_entropy)
    )
    assert np.isfinite(float(loss))


def test_trajectory_length_mismatch(net):
    obj = nd.Trajectory(ts=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="x has 2 rows but the objective has 3 times"):
        nd.value_and_grad(net, jnp.ones((2, 3)), jnp.zeros((2, 2)), objective=obj)
    with pytest.raises(ValueError, match=r"y has shape \(2, 2\) but the readout of CTRNN gives \(3, 2\)"):
        nd.value_and_grad(net, jnp.ones((3, 3)), jnp.zeros((2, 2)), objective=obj)


def test_bad_times():
    with pytest.raises(ValueError, match="strictly increasing and start after t = 0"):
        nd.Trajectory(ts=[0.0, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        nd.Trajectory(ts=[1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="weights have shape"):
        nd.Trajectory(ts=[1.0, 2.0], weights=jnp.ones(3))


def test_unknown_option_names_the_closest(net):
    with pytest.raises(TypeError, match="Unknown integration option `max_step`. Did you mean `max_steps`"):
        nd.relax(net, jnp.ones(3), max_step=10)


def test_rollout_step_budget(net):
    with pytest.raises(ValueError, match="more than max_steps=5"):
        nd.rollout(net, jnp.ones((3, 3)), [1.0, 2.0, 3.0], dt0=0.5, max_steps=5)


def test_bad_options(net):
    with pytest.raises(ValueError, match="`dt0` must be positive"):
        nd.relax(net, jnp.ones(3), dt0=0.0)
    with pytest.raises(ValueError, match="`solver` must be a diffrax solver"):
        nd.relax(net, jnp.ones(3), solver="euler")
    for bad in (dict(rtol=-1e-3), dict(atol=float("nan")), dict(rtol=jnp.ones(3))):
        (name,) = bad
        with pytest.raises(ValueError, match=rf"^`{name}` must be a finite number >= 0, got {name}="):
            nd.relax(net, jnp.ones(3), **bad)
    # A swept tolerance is traced: not checked, and it works.
    _, info = jax.jit(lambda t: nd.relax(net, jnp.ones(3), rtol=t, atol=0.0))(1e-4)
    assert bool(info["converged"])


def test_bad_estimator_arguments():
    with pytest.raises(ValueError, match="truncation must be a positive integer"):
        nd.BPTT(truncation=0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        nd.value_and_grad(
            nd.networks.CTRNN(2, 1, 1, key=jr.PRNGKey(0)),
            jnp.ones(1),
            jnp.ones(1),
            objective=nd.SteadyState(),
            estimator="bptt",
        )


def test_bad_network_arguments(getkey):
    with pytest.raises(ValueError, match="form must be 'rate' or 'current'"):
        nd.networks.CTRNN(4, 2, 1, form="voltage", key=getkey())
    with pytest.raises(ValueError, match="Layered needs sizes"):
        nd.networks.Layered((3,), key=getkey())


@pytest.mark.skipif(not hasattr(nd, "RBP"), reason="RBP lands with issue 3")
def test_steady_state_estimator_refuses_trajectory(net):
    with pytest.raises(ValueError, match="RBP cannot serve a Trajectory objective"):
        nd.value_and_grad(
            net, jnp.ones((2, 3)), jnp.zeros((2, 2)), objective=nd.Trajectory(ts=[1.0, 2.0]), estimator=nd.RBP()
        )


def test_differentiating_grads_is_refused(net):
    import equinox as eqx

    def f(n):
        _, g, _ = nd.value_and_grad(n, jnp.ones(3), jnp.zeros(2), objective=nd.SteadyState())
        return jnp.sum(g.W)

    with pytest.raises(ValueError, match="Differentiating through the `grads`"):
        eqx.filter_grad(f)(net)


def test_rtrl_refuses_a_relaxation_it_cannot_use(net):
    x, y = jnp.ones(net.n_in), jnp.zeros(net.n_out)
    with pytest.raises(ValueError, match="RTRL.*cannot use relaxation=.*nd.RBP"):
        nd.value_and_grad(
            net, x, y, objective=nd.SteadyState(), estimator=nd.RTRL(), relaxation=nd.relaxation.Anderson()
        )
    # The fixed-step relaxation is what RTRL runs: accepted.
    _, _, info = nd.value_and_grad(
        net, x, y, objective=nd.SteadyState(), estimator=nd.RTRL(), relaxation=nd.relaxation.FixedStep()
    )
    assert bool(info["converged"])
