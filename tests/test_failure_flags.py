"""Failure is reported, never success: every solve of every estimator that fails alone flips
`info["converged"]` and names its reason in `info["result"]`, and a non-finite loss or gradient
is never a success (issue 11, items 3 and 9). Each test here was checked to fail under the
one-line change named in its docstring."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import dense_ift_grad, rel_error


SS = nd.SteadyState()
CE = nd.SteadyState(nd.losses.softmax_cross_entropy)
R = nd.RESULTS


def _vg(net, x, y, est, objective=SS, **options):
    return nd.value_and_grad(net, x, y, objective=objective, estimator=est, **options)


def _codes(*results):
    """The integer codes of a batched result, or of a list of members (to compare batches)."""
    if len(results) == 1:
        return np.atleast_1d(np.asarray(results[0]._value))
    return np.array([int(np.asarray(r._value)) for r in results])


@pytest.fixture(scope="module")
def ctrnn():
    k = jr.split(jr.PRNGKey(11), 3)
    net = nd.networks.CTRNN(6, 3, 2, key=k[0])
    return net, jr.normal(k[1], (3,)), jr.normal(k[2], (2,))


@pytest.fixture(scope="module")
def hop():
    k = jr.split(jr.PRNGKey(40), 3)
    net = nd.networks.Hopfield(4, 8, 3, key=k[0])
    return net, jr.uniform(k[1], (4,)), jr.uniform(k[2], (3,))


# ---------------------------------------------------------------------------------------
# A. Non-finite is never success
# ---------------------------------------------------------------------------------------


def test_class_index_out_of_range_is_refused_when_concrete(ctrnn):
    net, x, _ = ctrnn
    for bad in (2, 7, -1):
        with pytest.raises(ValueError, match=rf"class index {bad}, outside \[0, 2\).*n_out=2"):
            _vg(net, x, jnp.array(bad), nd.BPTT(), CE)
    obj = nd.Trajectory(nd.losses.softmax_cross_entropy, ts=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"class index -1, outside \[0, 2\)"):
        _vg(net, jnp.ones((2, 3)), jnp.array([0, -1]), nd.BPTT(), obj)


def test_class_index_out_of_range_is_flagged_under_jit(ctrnn):
    """Inside jit the index is traced: the loss is NaN (no wrap of -1 to the last class), and
    `flag_nonfinite` reports it. Catches: `flag_nonfinite` not applied in value_and_grad,
    or `softmax_cross_entropy` going back to `-jnp.take(logp, y)`."""
    net, x, _ = ctrnn

    @jax.jit
    @jax.vmap
    def run(y):
        return _vg(net, x, y, nd.BPTT(), CE)

    loss, grads, info = run(jnp.array([0, 1, 2, -1]))
    np.testing.assert_array_equal(np.asarray(info["converged"]), [True, True, False, False])
    assert np.all(np.isfinite(loss[:2])) and np.all(np.isnan(loss[2:]))
    np.testing.assert_array_equal(
        _codes(info["result"]), _codes(R.successful, R.successful, R.nonfinite_gradient, R.nonfinite_gradient)
    )
    # The loss itself: NaN out of range, never the last class's loss for -1.
    logits = jnp.array([0.3, -1.2])
    assert np.isnan(nd.losses.softmax_cross_entropy(logits, jnp.array(-1)))
    assert np.isnan(nd.losses.softmax_cross_entropy(logits, jnp.array(2)))
    assert np.isfinite(nd.losses.softmax_cross_entropy(logits, jnp.array(1)))


@pytest.mark.parametrize("est", [nd.BPTT(), nd.RTRL()], ids=["bptt", "rtrl"])
def test_nan_in_readout_weight_or_target_is_not_success(ctrnn, est):
    """The dynamics never see the readout weight `V` or the target, so every solve
    converges; the NaN shows only in the loss and gradients. Catches: `flag_nonfinite`
    removed from value_and_grad (the info then says converged with NaN gradients)."""
    net, x, y = ctrnn
    bad_net = eqx.tree_at(lambda n: n.V, net, net.V.at[0, 0].set(jnp.nan))
    for n, t in ((net, y), (bad_net, y), (net, y.at[1].set(jnp.nan))):
        loss, grads, info = _vg(n, x, t, est)
        finite = bool(jnp.isfinite(loss))
        assert bool(info["converged"]) == finite
        assert info["result"] == (R.successful if finite else R.nonfinite_gradient)
    assert not finite


@pytest.mark.parametrize("est", [nd.RBP(), nd.EP(0.01)], ids=["rbp", "ep"])
def test_nan_target_is_not_success_for_steady_state_estimators(ctrnn, hop, est):
    net, x, y = hop if isinstance(est, nd.EP) else ctrnn
    loss, _, info = _vg(net, x, y.at[0].set(jnp.nan), est)
    assert not bool(info["converged"]) and not bool(jnp.isfinite(loss))
    assert info["result"] != R.successful


def test_complex_data_is_refused(ctrnn):
    net, x, y = ctrnn
    with pytest.raises(ValueError, match=r"x is complex \(complex128\).*imaginary part"):
        _vg(net, np.asarray(x) + 0.5j, y, nd.BPTT())
    with pytest.raises(ValueError, match=r"y is complex \(complex128\).*imaginary part"):
        _vg(net, x, np.asarray(y) + 0.5j, nd.BPTT())
    with pytest.raises(ValueError, match=r"xs is complex"):
        nd.rollout(net, np.ones((2, 3)) * 1j, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"x is complex"):
        nd.relax(net, x.astype(jnp.complex128))
