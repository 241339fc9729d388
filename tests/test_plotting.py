import os
import pathlib

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


def test_importing_plotting_leaves_the_backend_alone():
    import importlib

    import matplotlib

    old = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        importlib.reload(ndp)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(old)


def test_save_is_atomic_and_readable_by_others(tmp_path):
    fig = ndp.alignment(["a", "b"], np.array([[1.0, 0.5], [0.5, 1.0]]))
    old = os.umask(0o022)
    try:
        files = ndp.save(fig, tmp_path / "align")
    finally:
        os.umask(old)
    assert all(os.stat(f).st_mode & 0o777 == 0o644 for f in files)
    before = {f: pathlib.Path(f).read_bytes() for f in files}

    def killed(f, **kwargs):
        f.write(b"%PNG half a figure")
        raise KeyboardInterrupt  # killed mid-write

    fig.savefig = killed
    with pytest.raises(KeyboardInterrupt):
        ndp.save(fig, tmp_path / "align")
    assert {f: pathlib.Path(f).read_bytes() for f in files} == before  # the old figures, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["align.pdf", "align.png"]  # no temporary file left
