import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
import neurodyn.fidelity as fid
from helpers import assert_tree_close, dense_ift_grad, fine_trajectory_grad


def test_compare_statistics_on_known_vectors():
    ref = {"a": jnp.array([1.0, 0.0, 2.0]), "b": jnp.array([3.0])}
    same = fid.compare(ref, ref)
    assert same["cosine"] == pytest.approx(1.0) and same["rel_error"] == 0.0 and same["sign_agreement"] == 1.0
    scaled = fid.compare({"a": 2 * ref["a"], "b": 2 * ref["b"]}, ref)
    assert scaled["cosine"] == pytest.approx(1.0) and scaled["rel_error"] == pytest.approx(1.0)
    flipped = fid.compare({"a": -ref["a"], "b": ref["b"]}, ref)
    # entries: (-1, 0, -2, 3) vs (1, 0, 2, 3): cosine = (-1 - 4 + 9) / 14
    assert flipped["cosine"] == pytest.approx(4 / 14)
    assert flipped["sign_agreement"] == pytest.approx(1 / 3)  # the zero entry is skipped
    assert flipped["rel_error['b']"] == 0.0


def test_alignment_matrix_is_symmetric_with_unit_diagonal():
    g = {"x": {"w": jnp.array([1.0, 2.0])}, "y": {"w": jnp.array([2.0, -1.0])}, "z": {"w": jnp.array([1.0, 1.0])}}
    names, M = fid.alignment_matrix(g)
    assert names == ["x", "y", "z"]
    np.testing.assert_allclose(np.diag(M), 1.0)
    np.testing.assert_allclose(M, M.T)
    assert M[0, 1] == pytest.approx(0.0)


def test_steady_state_reference_matches_the_test_reference(getkey):
    net = nd.networks.CTRNN(6, 3, 2, key=getkey())
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    loss, g = fid.reference_gradient(net, x, y, nd.SteadyState())
    ref_loss, ref, _ = dense_ift_grad(net, x, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10)
    assert_tree_close(g, ref, rtol=1e-8, atol=1e-12)


def test_trajectory_reference_matches_the_test_reference(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    xs, ys = jr.normal(getkey(), (3, 2)), jr.normal(getkey(), (3, 2))
    ts = [0.5, 1.0, 2.0]
    loss, g = fid.reference_gradient(net, xs, ys, nd.Trajectory(ts=ts))
    ref_loss, ref = fine_trajectory_grad(net, xs, ys, ts)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-9)
    assert_tree_close(g, ref, rtol=1e-7, atol=1e-10)


def test_measure_reports_time_memory_and_gradient(getkey):
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    xs, ys = jr.uniform(getkey(), (4, 3)), jr.uniform(getkey(), (4, 2))
    out = fid.measure(nd.BPTT(), net, xs, ys, nd.SteadyState(), repeats=1)
    _, ref = fid.batch_reference(net, xs, ys, nd.SteadyState())
    assert fid.compare(out["grads"], ref)["cosine"] > 1 - 1e-9
    assert out["time_s"] > 0 and out["compile_s"] >= 0 and out["converged_fraction"] == 1.0
    assert out["peak_bytes"] is None or out["peak_bytes"] > 0
