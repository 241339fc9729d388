import os

import numpy as np
import pytest

import neurodyn.plotting as ndp


def test_slope_recovers_power_laws():
    x = np.array([1e-3, 1e-2, 1e-1])
    assert ndp.slope(x, 3 * x**2) == pytest.approx(2.0)
    assert ndp.slope(x, 0.5 * x) == pytest.approx(1.0)


def test_figures_render_and_save(tmp_path):
    rows = [
        dict(estimator=f"ep-{v}", beta=b, rel_error=c * b**p, n=n, time_s=1e-3 * n, peak_bytes=1e3 * n)
        for v, p, c in (("one-sided", 1, 1.0), ("centered", 2, 3.0))
        for b, n in zip((1e-3, 1e-2, 1e-1), (16, 32, 64))
    ]
    files = []
    files += ndp.save(ndp.fidelity_vs_knob(rows, "beta", slopes={"ep-one-sided": 1, "ep-centered": 2}), tmp_path / "beta")
    files += ndp.save(ndp.cost_vs_n(rows), tmp_path / "cost")
    files += ndp.save(ndp.alignment(["a", "b"], np.array([[1.0, 0.5], [0.5, 1.0]])), tmp_path / "align")
    curves = [dict(estimator=e, seed=s, epoch=k, train_loss=1.0 / (k + 1 + s), test_accuracy=0.5 + 0.1 * k)
              for e in ("bptt", "ep") for s in range(2) for k in range(3)]
    files += ndp.save(ndp.training_curves(curves), tmp_path / "train")
    for f in files:
        assert os.path.getsize(f) > 1000
