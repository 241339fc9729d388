import dataclasses
import subprocess
import sys

import pytest

import neurodyn as nd
from neurodyn import config as ndc
from neurodyn.runs import RunDir


@dataclasses.dataclass(frozen=True)
class Inner:
    beta: float = 0.1
    variant: str = "centered"


@dataclasses.dataclass(frozen=True)
class Schema:
    seed: int = 0
    sizes: tuple[int, ...] = (1, 2)
    estimator: Inner = Inner()


def test_load_typed_frozen_with_quick_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\nsizes: [4, 5]\nestimator: {beta: 0.2}\nquick:\n  estimator: {beta: 0.5}\n")
    cfg = ndc.load(f, Schema)
    assert cfg == Schema(3, (4, 5), Inner(0.2))
    assert ndc.load(f, Schema, quick=True).estimator.beta == 0.5
    cfg = ndc.load(f, Schema, overrides=["--estimator.beta", "0.05"])
    assert cfg.estimator.beta == 0.05 and cfg.seed == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1


@pytest.mark.parametrize(
    "text,match",
    [
        ("sed: 1\n", "unknown key 'sed'; did you mean 'seed'"),
        ("estimator: {betta: 1.0}\n", "unknown key 'estimator.betta'; did you mean 'beta'"),
        ("seed: 1.5\n", "'seed': expected an integer"),
        ("quick:\n  sizez: [1]\n", "unknown key 'quick.sizez'; did you mean 'sizes'"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ndc.ConfigError, match=match):
        ndc.load(f, Schema)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("experiment: compare_estimators\nsteady:\n  bach: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare_estimators", "--config", str(f), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'steady.bach'; did you mean 'batch'" in lines[0]
    assert "Traceback" not in proc.stderr


def test_registry_and_build_object():
    assert ndc.estimator_class("ep") is nd.EP
    est = ndc.build_object({"kind": "RBP", "adjoint": {"kind": "adjoint.Neumann", "K": 3}})
    assert isinstance(est, nd.RBP) and est.adjoint.K == 3
    with pytest.raises(ndc.ConfigError, match="unknown estimator 'bpt'; did you mean 'bptt'"):
        ndc.estimator_class("bpt")
    with pytest.raises(ndc.ConfigError, match="unknown kind 'adjoint.Neuman'"):
        ndc.build_object({"kind": "adjoint.Neuman"})


def test_run_dir_atomic_files_and_checkpoints(tmp_path):
    import jax.numpy as jnp

    run = RunDir(tmp_path / "run", Schema())
    assert "git_commit" in (run.path / "config.yaml").read_text()
    run.log({"a": 1, "b": jnp.asarray(2.0)})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"torn": ')  # a killed writer leaves a torn line: it is skipped
    assert run.rows() == [{"a": 1, "b": 2.0}]
    run.write_summary([{"x": 1}, {"x": 2, "y": 3}])
    assert (run.path / "summary.csv").read_text().splitlines()[0] == "x,y"
    tree = {"w": jnp.arange(3.0)}
    assert run.checkpoint(tree) == (None, None)
    run.save_checkpoint({"w": jnp.ones(3)}, {"step": 4})
    restored, meta = run.checkpoint(tree)
    assert meta["step"] == 4 and float(restored["w"].sum()) == 3.0


def test_misspelt_estimator_argument_is_one_line(tmp_path):
    # A misspelt estimator argument is found when the config loads (the `estimators:` field is
    # a spec checked against the constructor's signature), before the run directory exists.
    f = tmp_path / "bad.yaml"
    f.write_text("experiment: train\nestimators:\n  ep: {kind: EP, betta: 0.1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", str(f), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {f}: unknown key 'estimators.ep.betta' for EP; did you mean 'beta'?"]
    assert not (tmp_path / "o").exists()


def test_build_object_names_bad_arguments():
    with pytest.raises(ndc.ConfigError, match="unknown key 'est.betta' for EP; did you mean 'beta'"):
        ndc.build_object({"kind": "EP", "betta": 0.1}, "est.")
    with pytest.raises(ndc.ConfigError, match="unknown kind 'RPB'.*did you mean 'RBP'"):
        ndc.build_object({"kind": "RPB"})
    with pytest.raises(ndc.ConfigError, match="needs a 'kind'"):
        ndc.build_object({"beta": 0.1})


def test_a_run_dir_refuses_a_different_config(tmp_path):
    RunDir(tmp_path, Schema(seed=1))
    RunDir(tmp_path, Schema(seed=1))  # the same config: resume
    with pytest.raises(ndc.ConfigError, match=r"holds a run of a different config \(differs in estimator.beta, seed\)"):
        RunDir(tmp_path, Schema(seed=2, estimator=Inner(beta=0.3)))


def test_run_all_quick_reports_a_missing_experiment(tmp_path):
    (tmp_path / "a.yaml").write_text("experiment: no_such_experiment\n")
    (tmp_path / "b.yaml").write_text("seed: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run_all_quick", "--configs", str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "experiments.no_such_experiment" in proc.stdout
    assert "b.yaml: no 'experiment:' key" in proc.stdout
    assert "0 passed, 2 failed" in proc.stdout


def test_unknown_override_names_the_closest_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\n")
    with pytest.raises(ndc.ConfigError, match=r"unknown override '--estimator.betta'; did you mean '--estimator.beta'"):
        ndc.load(f, Schema, overrides=["--estimator.betta", "0.1"])
    assert ndc.load(f, Schema, overrides=["--estimator.beta=0.3", "--sizes", "7", "8"]) == Schema(1, (7, 8), Inner(0.3))
