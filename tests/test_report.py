"""experiments.report: two tiny runs of experiments.train side by side."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import report


ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--config",
    "configs/double_moon.yaml",
    "--quick",
    "--data.n",
    "200",
    "--epochs",
    "3",
    "--estimators",
    "{bptt: {kind: BPTT}}",
]


def _snapshot(path: pathlib.Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs differing in the learning rate and the seeds (run in parallel: ~1 minute)."""
    tmp = tmp_path_factory.mktemp("runs")
    a, b = tmp / "lr-0.05", tmp / "lr-0.2"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.train", *TINY, "--out", str(a)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.train",
                *TINY,
                "--out",
                str(b),
                "--optimizer.learning_rate",
                "0.2",
                "--seeds",
                "[1]",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    return a, b


@pytest.mark.slow  # the two runs of the fixture take about 12 s
def test_report_tables_only_the_differing_settings_and_plots_the_curves(two_runs, tmp_path, capsys):
    a, b = two_runs
    before = _snapshot(a), _snapshot(b)
    out = tmp_path / "report"
    report.main([str(a), str(b), "--out", str(out)])
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    # Only the settings that differ, after the run's name; then the summary's columns.
    assert header.startswith("| run | optimizer.learning_rate | seeds | estimator | seed |"), header
    assert "data.n" not in header and "epochs |" in header and "test_accuracy" in header
    rows = list(csv.DictReader((out / "report.csv").read_text().splitlines()))
    assert [(r["run"], r["optimizer.learning_rate"], r["seeds"], r["seed"]) for r in rows] == [
        ("lr-0.05", "0.05", "[0]", "0"),
        ("lr-0.2", "0.2", "[1]", "1"),
    ]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert (out / "report.md").read_text() == printed
    assert os.path.getsize(out / "figures" / "curves.png") > 1000
    # Read-only: no lock file, no new or touched file in either run.
    assert (_snapshot(a), _snapshot(b)) == before


@pytest.mark.slow  # the two runs of the fixture take about 12 s
def test_report_reads_sub_runs_and_picks_a_metric(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "sub"
    report.main([str(a / "bptt-seed0"), str(b / "bptt-seed1"), "--out", str(out), "--metric", "valid_accuracy"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("| run | optimizer.learning_rate | seeds |")
    rows = list(csv.DictReader((out / "report.csv").read_text().splitlines()))
    assert [r["run"] for r in rows] == ["bptt-seed0", "bptt-seed1"] and all(r["epoch"] == "3" for r in rows)
    assert (out / "figures" / "curves.png").exists()


@pytest.mark.slow  # the two runs of the fixture take about 12 s
def test_bad_input_is_one_line_and_exit_2(two_runs, tmp_path, capsys):
    a, _ = two_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    no_results = tmp_path / "no-results"
    no_results.mkdir()
    (no_results / "config.yaml").write_text((a / "config.yaml").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("config: [unclosed\n")
    cases = {
        str(tmp_path / "missing"): "is not a directory",
        str(empty): "is not a run directory: it has no config.yaml",
        str(no_results): "holds no results yet",
        str(broken): "cannot be read",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as e:
            report.main([str(a), path, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:
        report.main([str(a), "--out", str(tmp_path / "r"), "--metric", "tset_accuracy"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--metric tset_accuracy: no run logged it" in err and "test_accuracy" in err
    assert not (tmp_path / "r").exists()


def test_flatten_and_differing_settings():
    configs = [{"a": {"b": 1, "c": [1, 2]}, "d": "x"}, {"a": {"b": 2, "c": [1, 2]}, "d": "x", "e": 0}]
    keys, values = report.differing_settings(configs)
    assert keys == ["a.b", "e"] and values == [{"a.b": 1, "e": "-"}, {"a.b": 2, "e": 0}]


def test_sweep_runs_get_the_metric_against_the_learning_rate(tmp_path, capsys):
    """A sweep's run directory (written here by hand: config.yaml and summary.csv, as
    experiments.sweep writes them) has no learning curves: its figure is the sweep's."""
    runs = []
    for steps in (30, 60):
        run = tmp_path / f"sweep-{steps}"
        run.mkdir()
        (run / "config.yaml").write_text(f"config:\n  experiment: sweep\n  steps: {steps}\n  n_data: 512\n")
        lines = ["estimator,hidden,seed,learning_rate,final_loss,test_accuracy"]
        lines += [f"rbp,16,{s},{lr},0.1,{0.8 + lr + 0.01 * s}" for s in (0, 1) for lr in (0.01, 0.03, 0.1)]
        (run / "summary.csv").write_text("\n".join(lines) + "\n")
        runs.append(str(run))
    report.main([*runs, "--out", str(tmp_path / "r")])
    printed = capsys.readouterr().out
    assert (
        printed.splitlines()[0]
        == "| run | steps | estimator | hidden | seed | learning_rate | final_loss | test_accuracy |"
    )
    assert len(printed.splitlines()) == 2 + 12
    assert os.path.getsize(tmp_path / "r" / "figures" / "sweep.png") > 1000
