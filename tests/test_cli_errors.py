"""Every bad config or command line ends as ONE line on stderr, exit code 2, no traceback,
before any work; hostile configs run nothing and write nothing outside `--out`.

Most cases call an experiment's `main(argv)` in-process (fast); the security cases run the
CLI in a subprocess, in a temporary working directory, and check that no file appeared.
Read-only `--out` directories are not tested: the tests may run as root, which writes
anywhere; `--out` under an existing FILE (`somefile/sub`) stands in for an unwritable path.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

from experiments import compare_estimators, online_rtrl, sequence_task, sweep, train


REPO = pathlib.Path.cwd()
TRAIN = "experiment: train\ndata: {name: double_moon, n: 60}\nnetwork: {kind: layered, sizes: [4]}\nloss: softmax_cross_entropy\n"


def _run_main(main, capsys, tmp_path, text: str | bytes, *argv, out=None):
    f = tmp_path / "c.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = ["--config", str(f), "--out", str(tmp_path / "run") if out is None else out, *argv]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    return e.value.code, err


BAD_TRAIN = [
    # (case id, config text appended to TRAIN or replacing it, extra argv, expected text of the line)
    ("batch_size-0", TRAIN + "batch_size: 0\n", [], "'batch_size' = 0 is out of range: must be >= 1"),
    ("batch_size-negative", TRAIN + "batch_size: -4\n", [], "'batch_size' = -4 is out of range: must be >= 1"),
    ("epochs-override-negative", TRAIN, ["--epochs", "-1"], "'epochs' = -1 is out of range: must be >= 1"),
    (
        "valid_fraction",
        TRAIN.replace("n: 60}", "n: 60, valid_fraction: 1.5}"),
        [],
        "'data.valid_fraction' = 1.5 is out of range: must be >= 0 and < 1",
    ),
    (
        "fractions-sum",
        TRAIN.replace("n: 60}", "n: 60, valid_fraction: 0.5, test_fraction: 0.5}"),
        [],
        "leaves no training data",
    ),
    ("data.n-0", TRAIN.replace("n: 60", "n: 0"), [], "'data.n' = 0 is out of range: must be >= 1"),
    (
        "negative-layer-size",
        TRAIN.replace("sizes: [4]", "sizes: [4, -3]"),
        [],
        "'network.sizes[1]' = -3 is out of range: must be >= 1",
    ),
    (
        "negative-n_hidden",
        TRAIN.replace("{kind: layered, sizes: [4]}", "{kind: hopfield, n_hidden: -2}"),
        [],
        "'network.n_hidden' = -2 is out of range",
    ),
    (
        "network-unknown-argument",
        TRAIN.replace("sizes: [4]", "sizes: [4], n_hiden: 3"),
        [],
        "unknown key 'network.n_hiden' for Layered",
    ),
    ("network-unknown-kind", TRAIN.replace("kind: layered", "kind: layerd"), [], "did you mean 'Layered'"),
    (
        "network-gets-n_in",
        TRAIN.replace("sizes: [4]", "sizes: [4]}\nnetwork: {kind: hopfield, n_in: 3"),
        [],
        "'network.n_in' is set by the experiment",
    ),
    ("estimator-as-list", TRAIN + "estimators: {bptt: [BPTT]}\n", [], "'estimators.bptt': expected a mapping"),
    ("estimators-as-list", TRAIN + "estimators: [BPTT]\n", [], "'estimators': expected a mapping"),
    ("estimators-empty", TRAIN + "estimators: {}\n", [], "'estimators' is empty"),
    ("estimator-without-kind", TRAIN + "estimators: {a: {beta: 0.1}}\n", [], "'estimators.a' needs a 'kind'"),
    ("estimator-of-another-family", TRAIN + "estimators: {a: {kind: Neumann}}\n", [], "unknown kind 'Neumann'"),
    (
        "nested-of-wrong-family",
        TRAIN + "estimators: {a: {kind: RBP, adjoint: {kind: Anderson}}}\n",
        [],
        "at 'estimators.a.adjoint.kind'",
    ),
    ("seeds-empty", TRAIN + "seeds: []\n", [], "'seeds' is empty"),
    ("seeds-negative", TRAIN + "seeds: [0, -1]\n", [], "'seeds[1]' = -1 is out of range"),
    ("batch-larger-than-data", TRAIN + "batch_size: 64\n", [], "'batch_size' = 64 is larger than the training set"),
    (
        "learning-rate-string",
        TRAIN + "optimizer: {learning_rate: fast}\n",
        [],
        "'optimizer.learning_rate': expected a number",
    ),
    ("learning-rate-0", TRAIN + "optimizer: {learning_rate: 0}\n", [], "'optimizer.learning_rate' = 0 is out of range"),
    ("unknown-loss", TRAIN + "loss: hinge\n", [], "'loss' = 'hinge' is not one of"),
    ("unknown-data-set", TRAIN.replace("name: double_moon", "name: double_mon"), [], "did you mean 'double_moon'"),
    ("unknown-key", TRAIN + "epoch: 3\n", [], "unknown key 'epoch'; did you mean 'epochs'"),
    ("unknown-override", TRAIN, ["--epochz", "3"], "unknown override '--epochz'; did you mean '--epochs'"),
    (
        "unknown-override-into-map",
        TRAIN + "estimators: {ep: {kind: EP}}\n",
        ["--estimators.epp.beta", "0.1"],
        "unknown override '--estimators.epp.beta'; did you mean '--estimators.ep",
    ),
    (
        "bad-override-argument",
        TRAIN + "estimators: {ep: {kind: EP}}\n",
        ["--estimators.ep.betta", "0.1"],
        "unknown key 'estimators.ep.betta' for EP; did you mean 'beta'",
    ),
    ("override-without-value", TRAIN, ["--epochs"], "override '--epochs' needs a value"),
    ("stray-argument", TRAIN, ["oops"], "unexpected argument 'oops'"),
    ("name-escapes", TRAIN + "estimators: {'../../escaped': {kind: BPTT}}\n", [], "cannot be a folder name"),
    ("name-absolute", TRAIN + "estimators: {'/tmp/abs': {kind: BPTT}}\n", [], "cannot be a folder name"),
    ("name-dotdot", TRAIN + "estimators: {'..': {kind: BPTT}}\n", [], "cannot be a folder name"),
    ("name-empty", TRAIN + "estimators: {'': {kind: BPTT}}\n", [], "cannot be a folder name"),
    ("name-backslash", TRAIN + "estimators: {'a\\\\b': {kind: BPTT}}\n", [], "cannot be a folder name"),
    ("kind-module", TRAIN + "estimators: {a: {kind: 'neurodyn:runs'}}\n", [], "is a module, not an estimator class"),
    ("kind-function", TRAIN + "estimators: {a: {kind: 'neurodyn.runs:atomic_write'}}\n", [], "is a function"),
    ("kind-other-class", TRAIN + "estimators: {a: {kind: 'neurodyn.runs:RunDir'}}\n", [], "is another class"),
    ("kind-private", TRAIN + "estimators: {a: {kind: 'neurodyn._misc:tree_cast'}}\n", [], "private name"),
    ("kind-stdlib", TRAIN + "estimators: {a: {kind: 'os:system'}}\n", [], "standard-library module"),
    ("kind-not-importable", TRAIN + "estimators: {a: {kind: 'no_such_pkg.x:Y'}}\n", [], "cannot import no_such_pkg.x"),
    ("empty-config", "", [], "is empty"),
    ("comments-only", "# nothing\n# here\n", [], "is empty"),
    ("not-utf8", b"experiment: train\nname: \xff\xfe\n", [], "is not UTF-8 text"),
    ("not-a-mapping", "- a\n- b\n", [], "the top level must be a mapping"),
    ("yaml-syntax", "a: [1, 2\n", [], "not valid YAML"),
    ("yaml-alias", TRAIN + "x: &a 1\ny: *a\n", [], "uses YAML aliases (&anchor / *alias), which are not supported"),
    (
        "transition-init-unknown-inputs",
        TRAIN.replace("{kind: layered, sizes: [4]}", "{kind: narx, n_hidden: 4, q: 2}") + "init: transition\n",
        [],
        "'init: transition': transition_init does not know the input weights of NARX",
    ),
    (
        "relaxation-for-bptt",
        TRAIN + "relaxation: {kind: Backoff}\n",  # the default estimator is BPTT
        [],
        "'relaxation' = Backoff cannot serve 'estimators.bptt' (BPTT follows the fixed-step loop itself)",
    ),
    ("relaxation-bad-argument", TRAIN + "relaxation: {kind: Backoff, window: 0}\n", [], "Backoff needs window >= 1"),
    ("schedule-misspelt", TRAIN, ["--optimizer.schedule", "cosin"], "did you mean 'cosine'"),
    ("clip-norm-zero", TRAIN, ["--optimizer.clip_norm", "0"], "'optimizer.clip_norm' = 0 is out of range"),
    (
        "warmup-past-the-run",
        TRAIN,
        ["--optimizer.schedule", "cosine", "--optimizer.warmup_steps", "100000"],
        "optimizer: warmup_steps (100000) must be smaller than the run's",
    ),
    (
        "another-experiments-config",  # its keys would fail first, on a misleading "unknown key"
        "experiment: sequence_task\ntask: {name: adding}\nquick: {steps: 2}\n",
        [],
        "is for experiments.sequence_task (its 'experiment'), not experiments.train: "
        "run python -m experiments.sequence_task --config",
    ),
    (
        "experiment-override",
        TRAIN,
        ["--experiment", "sweep"],
        "'experiment' set to 'sweep', but this command is experiments.train",
    ),
    (
        "restore-best-without-validation",
        TRAIN + "data: {name: double_moon, n: 60, valid_fraction: 0}\nrestore_best: true\n",
        [],
        "'data.valid_fraction' = 0 holds no validation set",
    ),
]


@pytest.mark.parametrize("text,argv,expected", [c[1:] for c in BAD_TRAIN], ids=[c[0] for c in BAD_TRAIN])
def test_train_refuses_with_one_line(capsys, tmp_path, text, argv, expected):
    code, err = _run_main(train.main, capsys, tmp_path, text, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


@pytest.mark.parametrize(
    "case,expected",
    [("empty", "--out is empty"), ("file", "is an existing file"), ("under-file", "is a file, so the run directory")],
)
def test_out_is_checked(capsys, tmp_path, case, expected):
    (tmp_path / "somefile").write_text("x")
    out = {"empty": "", "file": str(tmp_path / "somefile"), "under-file": str(tmp_path / "somefile" / "sub")}[case]
    code, err = _run_main(train.main, capsys, tmp_path, TRAIN, out=out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err
    assert (tmp_path / "somefile").read_text() == "x"


OTHER = [
    (sweep.main, "experiment: sweep\nchunk: 0\n", [], "'chunk' = 0 is out of range: must be >= 1"),
    (sweep.main, "experiment: sweep\nsweep: {seed: []}\n", [], "'sweep.seed' is empty"),
    (
        sweep.main,
        "experiment: sweep\nn_data: 40\nbatch_size: 64\n",
        [],
        "'batch_size' = 64 is larger than the training set",
    ),
    (sweep.main, "experiment: sweep\nestimators: {'../x': {kind: RBP}}\n", [], "cannot be a folder name"),
    (sweep.main, "experiment: sweep\ngrid: {hidden: [0]}\n", [], "'grid.hidden[0]' = 0 is out of range"),
    (
        sequence_task.main,
        "experiment: sequence_task\nestimators: {'a/b': {kind: BPTT}}\n",
        [],
        "cannot be a folder name",
    ),
    (
        sequence_task.main,
        "experiment: sequence_task\nnetwork: {kind: ctrnn, n: 0}\n",
        [],
        "'network.n' = 0 is out of range",
    ),
    (sequence_task.main, "experiment: sequence_task\nsteps: 0\n", [], "'steps' = 0 is out of range"),
    (
        sequence_task.main,
        "experiment: sequence_task\nsteps: 10\nschedule: linear\nwarmup_steps: 10\n",
        [],
        "warmup_steps (10) must be smaller than the run's 10 optimiser steps",
    ),
    (
        sweep.main,
        "experiment: sweep\nsteps: 5\noptimizer: {schedule: cosine, warmup_steps: 5}\n",
        [],
        "warmup_steps (5) must be smaller than the run's 5 optimiser steps",
    ),
    (online_rtrl.main, "experiment: online_rtrl\nclip_norm: -1\n", [], "'clip_norm' = -1 is out of range"),
    (
        online_rtrl.main,
        "experiment: online_rtrl\nstream_length: 100\nupdate_every: 10\nschedule: cosine\nwarmup_steps: 10\n",
        [],
        "warmup_steps (10) must be smaller than the run's 10 optimiser steps",
    ),
    (online_rtrl.main, "experiment: online_rtrl\nsensitivities: ['../x']\n", [], "cannot be a folder name"),
    (online_rtrl.main, "experiment: online_rtrl\nsensitivities: [Bogus]\n", [], "unknown kind 'Bogus'"),
    (online_rtrl.main, "experiment: online_rtrl\nseeds: []\n", [], "'seeds' is empty"),
    (
        compare_estimators.main,
        "experiment: compare_estimators\nsteady: {network: {kind: hopfield, n_hidden: -1}}\n",
        [],
        "'steady.network.n_hidden' = -1 is out of range",
    ),
    (compare_estimators.main, "experiment: compare_estimators\nsteady: {batch: 0}\n", [], "'steady.batch' = 0"),
    (
        compare_estimators.main,
        "experiment: compare_estimators\nsteady: {variants: {a: {kind: runs.os.system}}}\n",
        [],
        "unknown kind 'runs.os.system'",
    ),
]


@pytest.mark.parametrize("main,text,argv,expected", OTHER, ids=[f"{m.__module__}-{e[:24]}" for m, _, _, e in OTHER])
def test_other_experiments_refuse_with_one_line(capsys, tmp_path, main, text, argv, expected):
    code, err = _run_main(main, capsys, tmp_path, text, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_alias_bomb_fails_fast(capsys, tmp_path):
    # "Billion laughs": 9 levels of 9 aliases each would expand to 9^9 strings.
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 1024
    t0 = time.perf_counter()
    code, err = _run_main(train.main, capsys, tmp_path, text)
    assert time.perf_counter() - t0 < 5
    assert code == 2 and len(err.strip().splitlines()) == 1 and "YAML aliases" in err


# -- security: subprocess, in a temporary working directory ---------------------------------


def _cli(module, config_text, cwd, *argv):
    (cwd / "c.yaml").write_text(config_text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", module, "--config", "c.yaml", "--out", "run", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


HOSTILE = {
    "os.system": 'estimators: {x: {kind: runs.os.system, command: "touch pwned"}}\n',
    "subprocess.run": 'estimators: {x: {kind: runs.subprocess.run, args: "id > pwned", shell: true}}\n',
    "import-path-subprocess": 'estimators: {x: {kind: "subprocess:run", args: "id > pwned", shell: true}}\n',
    "nested-os.system": 'estimators: {x: {kind: RBP, adjoint: {kind: runs.os.system, command: "touch pwned"}}}\n',
    "network-os.system": 'network: {kind: runs.os.system, command: "touch pwned"}\n',
}


@pytest.mark.parametrize("config", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_kind_runs_nothing(tmp_path, config):
    proc = _cli("experiments.train", "experiment: train\n" + config, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "kind" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # not even the run directory


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/neurodyn-escaped-abs"])
def test_estimator_names_cannot_escape_out(tmp_path, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    proc = _cli("experiments.train", TRAIN + f"estimators: {{'{name}': {{kind: BPTT}}}}\n", work)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot be a folder name" in proc.stderr
    assert not (tmp_path / "escaped-seed0").exists() and not pathlib.Path(name + "-seed0").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c.yaml"]


# -- a user's network class, named by import path ------------------------------------------

TAU_CTRNN = '''
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

import neurodyn as nd


class TauCTRNN(nd.networks.AbstractNetwork):
    """A CTRNN whose time constants (one per unit) are learnt: tau = exp(log_tau)."""

    W: Float[Array, "n n"]
    U: Float[Array, "n n_in"]
    b: Float[Array, " n"]
    V: Float[Array, "n_out n"]
    c: Float[Array, " n_out"]
    log_tau: Float[Array, " n"]
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(self, n: int, n_in: int, n_out: int, *, gain: float = 0.5, key):
        kw, ku, kv = jr.split(key, 3)
        self.W = gain * jr.normal(kw, (n, n)) / jnp.sqrt(n)
        self.U = jr.normal(ku, (n, n_in)) / jnp.sqrt(n_in)
        self.b = jnp.zeros((n,))
        self.V = jr.normal(kv, (n_out, n)) / jnp.sqrt(n)
        self.c = jnp.zeros((n_out,))
        self.log_tau = jnp.zeros((n,))
        self.n_state, self.n_in, self.n_out = n, n_in, n_out

    def __call__(self, t, r, x):
        return (-r + jnp.tanh(self.W @ r + self.U @ x + self.b)) / jnp.exp(self.log_tau)

    def init_state(self, x):
        return jnp.zeros((self.n_state,), self.W.dtype)

    def readout(self, r):
        return self.V @ r + self.c
'''


@pytest.mark.slow
def test_a_users_network_class_trains_by_import_path(tmp_path):
    pkg = tmp_path / "my_nets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tau.py").write_text(TAU_CTRNN)
    config = (
        "experiment: train\n"
        "data: {name: double_moon, n: 80, preprocessing: standardize}\n"
        "network: {kind: 'my_nets.tau:TauCTRNN', n: 6, gain: 0.5}\n"
        "loss: softmax_cross_entropy\n"
        "estimators: {bptt: {kind: BPTT}, rbp: {kind: RBP}}\n"
        "optimizer: {name: adam, learning_rate: 1e-2}\n"
        "epochs: 1\nbatch_size: 16\nmax_steps: 200\n"
    )
    (tmp_path / "c.yaml").write_text(config)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", "c.yaml", "--out", "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (tmp_path / "run" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("estimator,") and len(summary) == 3
    assert {line.split(",")[0] for line in summary[1:]} == {"bptt", "rbp"}
    assert (tmp_path / "run" / "bptt-seed0").is_dir() and (tmp_path / "run" / "rbp-seed0").is_dir()
    # ... and compares the estimators on it against the exact gradient.
    compare = (
        "experiment: compare_estimators\n"
        "steady:\n"
        "  network: {kind: 'my_nets.tau:TauCTRNN', n_in: 3, n_out: 2, n: 6, gain: 0.5}\n"
        "  batch: 2\n"
        "  variants: {bptt: {kind: BPTT}, rbp: {kind: RBP}}\n"
        "scaling: {enabled: false}\n"
    )
    (tmp_path / "cmp.yaml").write_text(compare)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare_estimators", "--config", "cmp.yaml", "--out", "cmp"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "cmp" / "summary.csv").read_text().splitlines()
    header = rows[0].split(",")
    by_name = {r.split(",")[header.index("estimator")]: r.split(",") for r in rows[1:] if r}
    assert {"bptt", "rbp"} <= set(by_name)
    for name in ("bptt", "rbp"):
        assert float(by_name[name][header.index("cosine")]) > 0.999


def test_deeply_nested_yaml_is_one_line(capsys, tmp_path):
    code, err = _run_main(train.main, capsys, tmp_path, "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not valid YAML" in err
