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
    files += ndp.save(
        ndp.fidelity_vs_knob(rows, "beta", slopes={"ep-one-sided": 1, "ep-centered": 2}), tmp_path / "beta"
    )
    files += ndp.save(ndp.cost_vs_n(rows), tmp_path / "cost")
    files += ndp.save(ndp.alignment(["a", "b"], np.array([[1.0, 0.5], [0.5, 1.0]])), tmp_path / "align")
    curves = [
        dict(estimator=e, seed=s, epoch=k, train_loss=1.0 / (k + 1 + s), test_accuracy=0.5 + 0.1 * k)
        for e in ("bptt", "ep")
        for s in range(2)
        for k in range(3)
    ]
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


def test_sweep_curves_mean_and_band_over_seeds(tmp_path):
    rows = [
        dict(
            estimator=e,
            hidden=16,
            seed=s,
            learning_rate=lr,
            test_accuracy=0.5 + 0.1 * k + 0.01 * s + (0.05 if e == "rbp" else 0),
        )
        for e in ("bptt", "rbp")
        for s in range(3)
        for k, lr in enumerate((0.003, 0.01, 0.03, 0.1))
    ]
    rows.append(dict(estimator="rbp", seed=9, learning_rate="", test_accuracy=0.0))  # no x: left out
    fig = ndp.sweep_curves(rows, x="learning_rate", metric="test_accuracy", group="estimator")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "test accuracy"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"bptt (mean of 3)", "rbp (mean of 3)"}
    np.testing.assert_allclose(lines["rbp (mean of 3)"].get_xdata(), [0.003, 0.01, 0.03, 0.1])
    np.testing.assert_allclose(lines["bptt (mean of 3)"].get_ydata(), [0.51, 0.61, 0.71, 0.81])  # mean over seeds 0..2
    # The band spans the lowest and the highest seed at each point.
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.50) and band[:, 1].max() == pytest.approx(0.82)
    # Several group columns; a linear axis when asked.
    fig2 = ndp.sweep_curves(rows, group=("estimator", "hidden"), logx=False)
    assert fig2.axes[0].get_xscale() == "linear"
    assert {line.get_label() for line in fig2.axes[0].get_lines()} == {
        "estimator=bptt, hidden=16 (mean of 3)",
        "estimator=rbp, hidden=16 (mean of 3)",
    }
    assert os.path.getsize(ndp.save(fig, tmp_path / "sweep")[0]) > 1000
    with pytest.raises(ValueError, match="no row has both 'learning_rate' and 'final_loss'"):
        ndp.sweep_curves([dict(learning_rate=0.1)], metric="final_loss")


def test_variants_of_one_family_get_distinct_colours():
    # rtrl, rtrl-snap1 and rtrl-uoro used to share the RTRL colour and could not be told apart.
    names = ["bptt", "rtrl", "rtrl-snap1", "rtrl-uoro"]
    rows = [dict(estimator=e, seed=s, epoch=k, test_accuracy=0.1 * k) for e in names for s in (0, 1) for k in (1, 2)]
    fig = ndp.training_curves(rows, metrics=("test_accuracy",))
    colors = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert set(colors) == set(names) and len(set(colors.values())) == len(names)
    assert colors["bptt"] == "C0" and colors["rtrl"] == "C3"  # the first of a family keeps its colour
    cost = ndp.cost_vs_n([dict(estimator=e, n=n, time_s=1e-3 * n, peak_bytes=n) for e in names for n in (8, 16)])
    assert len({line.get_color() for line in cost.axes[0].get_lines()}) == len(names)
