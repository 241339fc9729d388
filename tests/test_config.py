import dataclasses
import json
import os
import pathlib
import stat
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
        capture_output=True,
        text=True,
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
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {f}: unknown key 'estimators.ep.betta' for EP; did you mean 'beta'?"
    ]
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
        capture_output=True,
        text=True,
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


@pytest.mark.parametrize(
    "text,value", [("1e-3", 1e-3), ("1E5", 1e5), (".5", 0.5), ("-2.5e+3", -2500.0), ("3", 3), ("1_000", 1000)]
)
def test_yaml_reads_yaml12_floats(text, value):
    got = ndc.parse_yaml(f"x: {text}\n")["x"]
    assert got == value and type(got) is type(value)


def test_learning_rate_1e_minus_3_is_a_number(tmp_path):
    from experiments import train

    f = tmp_path / "c.yaml"
    f.write_text("optimizer: {learning_rate: 1e-3}\n")
    assert ndc.load(f, train.Config).optimizer.learning_rate == 1e-3
    assert ndc.load(f, train.Config, overrides=["--optimizer.learning_rate", "2E-4"]).optimizer.learning_rate == 2e-4


@pytest.mark.parametrize("config", sorted(pathlib.Path("configs").glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_config_loads(config, quick):
    import importlib

    module = importlib.import_module(f"experiments.{ndc.read_yaml(config)['experiment']}")
    cfg = ndc.load(config, module.Config, quick=quick)
    assert cfg.experiment == module.Config().experiment


@dataclasses.dataclass(frozen=True)
class WithSpecs:
    estimator: dict = ndc.field(default_factory=lambda: {"kind": "RBP"}, help="an estimator", spec="estimators")
    estimators: dict = ndc.field(default_factory=dict, help="named estimators", spec="estimators", names=True)
    sizes: tuple[int, ...] = ndc.field((1, 2), help="sizes", ge=1)
    inner: Inner = ndc.field(Inner(), help="a section")
    flag: bool = ndc.field(False, help="a flag")


def test_overrides_reach_maps_lists_and_new_spec_arguments(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("estimators: {ep: {kind: EP, beta: 0.1}, rbp: {kind: RBP}}\nsizes: [3, 4]\n")
    cfg = ndc.load(
        f,
        WithSpecs,
        overrides=[
            "--estimators.ep.beta",
            "0.02",
            "--estimator.adjoint.kind",
            "Neumann",
            "--estimator.adjoint.K",
            "7",
            "--sizes.1",
            "9",
            "--inner.beta",
            "0.05",
            "--estimators.rbp.adjoint",
            "{kind: JaxGMRES}",
            "--flag",
        ],
    )
    assert cfg.estimators["ep"]["beta"] == 0.02 and cfg.sizes == (3, 9) and cfg.inner.beta == 0.05 and cfg.flag
    assert cfg.estimator == {"kind": "RBP", "adjoint": {"kind": "Neumann", "K": 7}}
    est = ndc.build_object(cfg.estimator, "estimator.", family="estimators")
    assert isinstance(est, nd.RBP) and isinstance(est.adjoint, nd.adjoint.Neumann) and est.adjoint.K == 7
    with pytest.raises(ndc.ConfigError, match=r"unknown override '--sizes.5'"):
        ndc.load(f, WithSpecs, overrides=["--sizes.5", "1"])
    with pytest.raises(
        ndc.ConfigError,
        match=r"'estimator.adjoint.kind' .*unknown kind 'Neuman'|unknown kind 'Neuman'.*did you mean 'Neumann'",
    ):
        ndc.load(f, WithSpecs, overrides=["--estimator.adjoint.kind", "Neuman"])
    with pytest.raises(ndc.ConfigError, match=r"'sizes\[0\]' = 0 is out of range: must be >= 1"):
        ndc.load(f, WithSpecs, overrides=["--sizes", "[0, 1]"])


def test_help_shows_the_loaded_config_once(tmp_path, capsys):
    from experiments import train

    with pytest.raises(SystemExit) as e:
        train.main(["--config", "configs/double_moon.yaml", "--quick", "--help", "--epochs", "5"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.count("usage:") == 1
    assert "values from configs/double_moon.yaml" in out
    assert "--data.n = 400" in out and "--epochs = 5" in out and "--init = transition" in out
    assert "passes over the training set [>= 1]" in out  # every field has a one-line description
    for f in dataclasses.fields(train.Config):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    "kind,cls",
    [("RBP", "RBP"), ("rbp", "RBP"), ("EP", "EP"), ("neurodyn:BPTT", "BPTT")],
)
def test_estimator_kinds(kind, cls):
    assert ndc.resolve(kind, "estimators") is getattr(nd, cls)


@pytest.mark.parametrize(
    "kind,family,cls",
    [
        ("hopfield", "networks", "networks.Hopfield"),
        ("Neumann", "adjoints", "adjoint.Neumann"),
        ("AdjointODE", "adjoints", "adjoint.AdjointODE"),
        ("adjoint.Neumann", "adjoints", "adjoint.Neumann"),
        ("SnAp1", "sensitivities", "rtrl.SnAp1"),
        ("rtrl.SnAp1", "sensitivities", "rtrl.SnAp1"),
        ("snap_1", "sensitivities", "rtrl.SnAp1"),
        ("anderson", "relaxations", "relaxation.Anderson"),
        ("leaky_relu", "activations", "activations.LeakyReLU"),
        ("neurodyn.networks:Layered", "networks", "networks.Layered"),
    ],
)
def test_kinds_of_every_family(kind, family, cls):
    mod, name = cls.split(".")
    assert ndc.resolve(kind, family) is getattr(getattr(nd, mod), name)


def test_nested_specs_resolve_in_the_family_of_their_parameter():
    est = ndc.build_object({"kind": "RBP", "adjoint": {"kind": "Neumann", "K": 10}})
    assert isinstance(est.adjoint, nd.adjoint.Neumann) and est.adjoint.K == 10
    assert isinstance(ndc.build_object({"kind": "RTRL", "sensitivity": {"kind": "SnAp1"}}).sensitivity, nd.rtrl.SnAp1)
    with pytest.raises(ndc.ConfigError, match=r"unknown kind 'Anderson' at 'adjoint.kind'"):
        ndc.build_object({"kind": "RBP", "adjoint": {"kind": "Anderson"}})


def test_register_a_users_class():
    class MyRBP(nd.RBP):
        pass

    ndc.register("estimators", "my_rbp", MyRBP)
    try:
        assert isinstance(ndc.build_object({"kind": "my_rbp"}, family="estimators"), MyRBP)
        with pytest.raises(TypeError, match="not a subclass of AbstractEstimator"):
            ndc.register("estimators", "bad", dict)
    finally:
        ndc._REGISTERED["estimators"].pop("my_rbp")


NETWORK_ARGS = {
    "CTRNN": {"n": 4},
    "Elman": {"n": 4},
    "Hopfield": {"n_hidden": 4},
    "Layered": {"sizes": [4]},
    "LayeredHopfield": {"sizes": [4]},
    "NARX": {},
    "RecurrentMLP": {"sizes": [4]},
    "SecondOrder": {"n": 4},
}


def test_every_network_of_the_registry_builds_from_a_config():
    import jax.random as jr

    assert set(ndc.names("networks")) == set(NETWORK_ARGS)  # a new network: add it here
    for kind, args in NETWORK_ARGS.items():
        spec = {"kind": kind.lower(), "activation": "tanh", **args}
        ndc.check_network(spec)
        net = ndc.build_network(spec, n_in=3, n_out=2, key=jr.PRNGKey(0))
        assert type(net).__name__ == kind and (net.n_in, net.n_out) == (3, 2)


_CACHE_PROBE = """
import json, os, sys
import jax, jax.monitoring
import neurodyn.config as ndc
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
path = ndc.enable_compilation_cache()
if path is not None and sys.argv[1] == "compile":
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # store even this one
    jax.jit(lambda x: jax.numpy.sin(x) * 3 + 1)(jax.numpy.arange(5.0)).block_until_ready()
print(json.dumps(dict(path=path, dir=jax.config.values.get("jax_compilation_cache_dir"),
                      hits=hits.count("/jax/compilation_cache/cache_hits"))))
"""


def _run_probe(tmp_path, what="compile", **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NEURODYN_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **extra)
    out = subprocess.run(
        [sys.executable, "-c", _CACHE_PROBE, what], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_experiments_reuse_compiled_programs_across_processes(tmp_path):
    first = _run_probe(tmp_path)
    root = tmp_path / "xdg" / "neurodyn" / "xla"
    assert first["path"] == first["dir"] and pathlib.Path(first["path"]).parent == root
    assert stat.S_IMODE(os.stat(first["path"]).st_mode) == 0o700 and first["hits"] == 0
    assert any(pathlib.Path(first["path"]).iterdir())  # the program was stored
    second = _run_probe(tmp_path)  # another process: read, not compiled
    assert second["path"] == first["path"] and second["hits"] >= 1
    # Off, or JAX's own cache set: ours is not used.
    assert _run_probe(tmp_path, NEURODYN_COMPILATION_CACHE="off")["dir"] is None
    own = _run_probe(tmp_path, "none", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "own"))
    assert own["path"] == own["dir"] == str(tmp_path / "own")
    # A directory others can write to could hold someone else's code: not used.
    os.chmod(first["path"], 0o777)
    assert _run_probe(tmp_path, "none")["dir"] is None
