"""experiments.train keeps each sub-run's trained network; load_network gives it back."""

import csv

import numpy as np
import pytest

import neurodyn as nd
from experiments import train


TINY = (
    "experiment: train\ndata: {name: double_moon, n: 300, preprocessing: standardize}\n"
    "network: {kind: layered, sizes: [8]}\nloss: softmax_cross_entropy\n"
    "estimators: {rbp: {kind: RBP}}\noptimizer: {name: sgd, learning_rate: 0.01}\nepochs: 6\nbatch_size: 16\n"
)


def _train(tmp_path, name, extra=""):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(TINY + extra)
    out = tmp_path / name
    train.main(["--config", str(cfg), "--out", str(out)])
    with open(out / "summary.csv") as f:
        (row,) = csv.DictReader(f)
    return out, row


@pytest.mark.parametrize("restore_best", [False, True])
def test_the_loaded_network_scores_the_runs_accuracy_at_its_epoch(tmp_path, restore_best):
    out, row = _train(tmp_path, "run", f"restore_best: {str(restore_best).lower()}\n")
    net, (tr, va, te), info = train.load_network(out / "rbp-seed0")
    epoch = int(row["best_epoch"]) if restore_best else int(row["epochs"])
    expected = float(row["test_accuracy"] if restore_best else row["last_test_accuracy"])
    assert info == dict(seed=0, epoch=epoch)
    # The data splits are the run's own: the same sizes, the training split standardised on itself.
    assert len(tr[0]) + len(va[0]) + len(te[0]) == 300 and len(va[0]) > 0
    np.testing.assert_allclose(np.mean(tr[0], axis=0), 0.0, atol=1e-5)
    assert nd.training.accuracy(net, *te) == pytest.approx(expected, abs=1e-6)
    if restore_best:  # the setting must tell the two apart: the peak is not the last epoch, nor its accuracy
        assert epoch < int(row["epochs"]) and row["test_accuracy"] != row["last_test_accuracy"], row


def test_load_network_names_what_is_missing(tmp_path):
    out, _ = _train(tmp_path, "run", "epochs: 1\n")
    with pytest.raises(nd.config.ConfigError, match="holds no trained network: pass a sub-run"):
        train.load_network(out)  # the top-level run, not a sub-run
    with pytest.raises(
        nd.config.ConfigError,
        match="is not a run directory: it has no config.yaml: pass a sub-run of experiments.train",
    ):
        train.load_network(tmp_path / "nowhere")
    # A damaged network file is named, never loaded as another network.
    f = out / "rbp-seed0" / "results" / "network.result"
    f.write_bytes(f.read_bytes()[:-3] + b"xyz")
    with pytest.raises(nd.runs.DamagedFileError, match="network.result is damaged"):
        train.load_network(out / "rbp-seed0")


SEQUENCE = (
    "experiment: sequence_task\ntask: {name: adding, T: 6}\nnetwork: {kind: ctrnn, n: 8}\n"
    "estimators: {bptt: {kind: BPTT}}\nlearning_rate: 0.02\nsteps: 20\nbatch_size: 8\nlog_every: 10\n"
)


def test_a_sequence_task_network_scores_the_runs_last_metric(tmp_path):
    import jax
    import jax.random as jr

    from experiments import sequence_task

    cfg = tmp_path / "seq.yaml"
    cfg.write_text(SEQUENCE)
    out = tmp_path / "seq"
    sequence_task.main(["--config", str(cfg), "--out", str(out)])
    with open(out / "summary.csv") as f:
        (row,) = csv.DictReader(f)
    net, (sample, test), info = sequence_task.load_network(out / "bptt-seed0")
    assert info == dict(seed=0, step=20, classify=False) and test is None
    batch = jax.vmap(sample)(jr.split(jr.PRNGKey(999), 256))  # the run's evaluation sequences
    expected = float(row["test_mse"])
    assert float(sequence_task.score(net, *batch, classify=False)) == pytest.approx(expected, rel=1e-6)
    # The network is the trained one, not the initialisation its structure was rebuilt from.
    init = nd.config.build_network({"kind": "ctrnn", "n": 8}, n_in=2, n_out=1, key=jr.PRNGKey(0))
    assert float(sequence_task.score(init, *batch, classify=False)) != pytest.approx(expected, rel=1e-3)
    with pytest.raises(nd.config.ConfigError, match="holds no trained network"):
        sequence_task.load_network(out)
    with pytest.raises(nd.config.ConfigError, match="is a run of experiments.sequence_task, not of experiments.train"):
        train.load_network(out / "bptt-seed0")  # the other experiment's loader
