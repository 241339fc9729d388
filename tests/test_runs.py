"""Run directories: done markers, the lock, stale configs, checksums, retention, permissions.

Fast (no training): `fit`'s use of them is tested in tests/test_training.py and
tests/test_resume.py.
"""

import dataclasses
import fcntl
import json
import os
import pathlib
import stat
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from neurodyn.config import ConfigError
from neurodyn.runs import atomic_write, DamagedFileError, RunDir, RunDirError, RunLockedError, StaleRunError


ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    seed: int = 0
    name: str = "a"


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_done_and_mark_done(tmp_path):
    run = RunDir(tmp_path)
    assert not run.done("chunk-0") and not run.done("chunk-1")
    run.mark_done("chunk-0")
    assert run.done("chunk-0") and not run.done("chunk-1")
    assert RunDir(tmp_path).done("chunk-0")  # kept on disk for the next process
    with pytest.raises(ValueError, match="done key '../x'"):
        run.done("../x")


def test_lock_refuses_a_second_process_and_names_the_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    RunDir(tmp_path / "run")  # the same process again: no deadlock
    nested = RunDir(tmp_path / "run" / "sub")  # a sub-run has its own lock
    code = f"from neurodyn.runs import RunDir\nRunDir({str(tmp_path / 'run')!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "RunLockedError" in proc.stderr
    assert f"is in use by another process (PID {os.getpid()})" in proc.stderr and "choose another --out" in proc.stderr
    assert issubclass(RunLockedError, ConfigError)  # experiments' entrypoint: one line, exit code 2

    def free(path):
        fd = os.open(path / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    assert not free(tmp_path / "run")
    nested.close()
    assert free(tmp_path / "run" / "sub") and not free(tmp_path / "run")
    run.close()  # the second RunDir of that directory (never closed) still holds it
    assert not free(tmp_path / "run")
    with RunDir(tmp_path / "other") as other:
        assert not free(other.path)
    assert free(tmp_path / "other")


def test_config_yaml_records_the_config_and_its_hash(tmp_path):
    RunDir(tmp_path, Cfg(lr=0.5))
    text = (tmp_path / "config.yaml").read_text()
    assert "lr: 0.5" in text and "config_sha256:" in text and "git_commit" in text
    RunDir(tmp_path, Cfg(lr=0.5))  # the same config: resume


def test_a_different_config_is_refused_once_the_run_has_results(tmp_path):
    with RunDir(tmp_path, Cfg()) as run:
        run.log(dict(epoch=1))
    with pytest.raises(
        StaleRunError, match=r"holds a run of a different config \(differs in lr, name\).*choose another --out"
    ):
        RunDir(tmp_path, Cfg(lr=0.2, name="b"))
    with RunDir(tmp_path, Cfg()):  # the same config resumes
        pass


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int = 1


@dataclasses.dataclass(frozen=True)
class Old:
    lr: float = 0.1
    inner: Inner = Inner()


@dataclasses.dataclass(frozen=True)
class InnerLater:  # a later version of Inner: one more field
    a: int = 1
    clip: float | None = None


@dataclasses.dataclass(frozen=True)
class Later:  # a later version of Old: two more fields, one nested
    lr: float = 0.1
    inner: InnerLater = InnerLater()
    schedule: str = "constant"


def test_a_run_made_before_an_option_existed_resumes_with_it_off(tmp_path):
    with RunDir(tmp_path, Old()) as run:
        run.log(dict(epoch=1))
    with RunDir(tmp_path, Later()):  # the added fields at their defaults: the same run
        pass
    with pytest.raises(StaleRunError, match=r"differs in inner\.clip\)"):  # only the field that is set
        RunDir(tmp_path, Later(inner=InnerLater(clip=1.0)))
    with pytest.raises(StaleRunError, match=r"differs in schedule\)"):
        RunDir(tmp_path, Later(schedule="cosine"))
    with pytest.raises(StaleRunError, match=r"differs in lr\)"):  # an old field still counts
        RunDir(tmp_path, Later(lr=0.2))


def test_read_config_gives_the_runs_config_back(tmp_path):
    with RunDir(tmp_path, Old(lr=0.3)) as run:
        run.log(dict(epoch=1))
    run = RunDir(tmp_path, lock=False)
    assert run.read_config() == {"lr": 0.3, "inner": {"a": 1}}
    # Built into a later version of the schema: the fields it lacks take their defaults.
    assert run.read_config(Later) == Later(lr=0.3)
    with pytest.raises(RunDirError, match=r"config.yaml: unknown key 'inner'"):
        run.read_config(Cfg)  # another experiment's schema: named, not half-built
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("lr: 0.3", "lr: 0.9"))  # edited by hand
    with pytest.raises(RunDirError, match="config.yaml is damaged"):
        run.read_config()
    with pytest.raises(RunDirError, match="is not a run directory: it has no config.yaml"):
        RunDir(tmp_path / "empty", lock=False).read_config()


@dataclasses.dataclass(frozen=True)
class TrainCfg:
    experiment: str = "train"
    lr: float = 0.1


@dataclasses.dataclass(frozen=True)
class SweepCfg:
    experiment: str = "sweep"
    lr: float = 0.1


def test_read_config_names_the_experiment_a_run_belongs_to(tmp_path):
    with RunDir(tmp_path, SweepCfg()) as run:
        run.log(dict(step=1))
    run = RunDir.reader(tmp_path)
    assert run.read_config(SweepCfg) == SweepCfg()
    # The same fields, another experiment: refused by name, not built into the wrong schema.
    with pytest.raises(RunDirError, match=r"is a run of experiments.sweep, not of experiments.train"):
        run.read_config(TrainCfg)


def test_a_saved_network_comes_back_only_into_its_own_structure(tmp_path):
    with pytest.raises(RunDirError, match="nowhere is not a run directory: it has no config.yaml: pass X"):
        RunDir.reader(tmp_path / "nowhere", ": pass X")
    assert not (tmp_path / "nowhere").exists()  # reading creates nothing
    net, other = eqx.nn.Linear(2, 3, key=jr.PRNGKey(0)), eqx.nn.Linear(2, 3, key=jr.PRNGKey(1))
    with RunDir(tmp_path / "run", Cfg()) as run:
        with pytest.raises(RunDirError, match="holds no trained network"):
            run.network_info()
        run.save_network(net, seed=3, epoch=7)
    run = RunDir.reader(tmp_path / "run")
    assert run.network_info() == {"seed": 3, "epoch": 7}
    back = run.load_network(other)  # `other` gives the structure only: the arrays are the saved ones
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(net), strict=True))
    assert not np.array_equal(back.weight, other.weight)
    with pytest.raises(StaleRunError, match="network.result does not fit the network rebuilt"):
        run.load_network(eqx.nn.Linear(2, 4, key=jr.PRNGKey(0)))  # another size
    (tmp_path / "run" / "results" / "network.result").unlink()  # info kept, arrays lost
    with pytest.raises(RunDirError, match="has network_info but no network result: rerun its command"):
        run.load_network(other)


def test_a_start_that_never_ran_does_not_block_the_corrected_rerun(tmp_path, capsys):
    with RunDir(tmp_path, Cfg(name="typo")):
        pass  # failed before any work: no checkpoints, no metrics
    RunDir(tmp_path, Cfg(name="fixed"))
    assert "name: fixed" in (tmp_path / "config.yaml").read_text()
    assert "never started" in capsys.readouterr().err
    with pytest.raises(StaleRunError, match="differs in name"):  # still open in this process
        RunDir(tmp_path, Cfg(name="third"))


def test_results_without_or_with_a_damaged_config_are_refused(tmp_path):
    with RunDir(tmp_path / "a", Cfg()) as run:
        run.save_checkpoint({"w": jnp.ones(2)}, dict(step=1))
    (tmp_path / "a" / "config.yaml").unlink()
    with pytest.raises(StaleRunError, match="holds results but no config.yaml"):
        RunDir(tmp_path / "a", Cfg())
    with RunDir(tmp_path / "b", Cfg()) as run:
        run.log(dict(epoch=1))
    text = (tmp_path / "b" / "config.yaml").read_text()
    (tmp_path / "b" / "config.yaml").write_text(text.replace("lr: 0.1", "lr: 0.7"))  # edited by hand
    with pytest.raises(StaleRunError, match="config.yaml is damaged"):
        RunDir(tmp_path / "b", Cfg(lr=0.7))
    # A sub-run's results count for the directory above it.
    with RunDir(tmp_path / "c", Cfg()):
        pass
    with RunDir(tmp_path / "c" / "sub") as sub:
        sub.log(dict(epoch=1))
    with pytest.raises(StaleRunError, match="differs in seed"):
        RunDir(tmp_path / "c", Cfg(seed=1))


def test_checkpoint_retention_keeps_the_newest_k(tmp_path):
    run = RunDir(tmp_path, keep=2)
    for step in range(1, 6):
        run.save_checkpoint({"w": jnp.full(3, float(step))}, dict(step=step))
    files = sorted(p.name for p in run.checkpoints.iterdir())
    assert files == ["last-4.eqx", "last-4.json", "last-5.eqx", "last-5.json", "last.json"]
    tree, meta = run.checkpoint({"w": jnp.zeros(3)})
    assert meta["step"] == 5 and float(tree["w"][0]) == 5.0
    with pytest.raises(ValueError, match="keep at least one"):
        RunDir(tmp_path, keep=0)


def test_damaged_checkpoints_fall_back_or_raise_naming_the_file(tmp_path, capsys):
    run = RunDir(tmp_path)
    like = {"w": jnp.zeros(3)}
    for step in (1, 2, 3):
        run.save_checkpoint({"w": jnp.full(3, float(step))}, dict(step=step))
    data = bytearray((run.checkpoints / "last-3.eqx").read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (run.checkpoints / "last-3.eqx").write_bytes(bytes(data))
    tree, meta = run.checkpoint(like)
    assert meta["step"] == 2 and float(tree["w"][0]) == 2.0
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "last-3.eqx (checksum mismatch)" in err[0]
        and "resuming from" in err[0]
        and "last-2.json" in err[0]
    )
    # The metadata: a truncated last.json falls back to the same step's copy.
    (run.checkpoints / "last-3.eqx").write_bytes(b"")
    for step in (1, 2):
        p = run.checkpoints / f"last-{step}.eqx"
        p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(
        DamagedFileError, match=r"last-3.eqx is damaged \(checksum mismatch\) and no intact older checkpoint.*delete"
    ):
        run.checkpoint(like)
    # Intact but of another structure: the directory holds another run.
    run.save_checkpoint({"w": jnp.ones(3)}, dict(step=4))
    text = (run.checkpoints / "last.json").read_text()
    (run.checkpoints / "last.json").write_text(text[: len(text) // 2])
    _, meta = run.checkpoint(like)
    assert meta["step"] == 4 and "last.json (unreadable: JSONDecodeError)" in capsys.readouterr().err
    with pytest.raises(StaleRunError, match="does not fit the state being restored"):
        run.checkpoint({"v": jnp.zeros(5)})
    with pytest.raises(StaleRunError, match=r"differs in settings.lr"):
        RunDir(tmp_path / "x").save_checkpoint(like, dict(step=1, settings=dict(lr=0.1)))
        RunDir(tmp_path / "x").checkpoint(like, expect=dict(settings=dict(lr=0.2)))


def test_results_are_checksummed(tmp_path, capsys):
    run = RunDir(tmp_path)
    assert run.load_result("chunk-0") is None
    rows = [dict(a=1, b=np.float32(0.5), c=np.arange(3))]
    run.save_result("chunk-0", rows)
    run.save_result("blob", b"\x00\x01binary")
    assert run.load_result("chunk-0") == [dict(a=1, b=0.5, c=[0, 1, 2])]
    assert run.load_result("blob") == b"\x00\x01binary"
    p = tmp_path / "results" / "chunk-0.result"
    p.write_bytes(p.read_bytes()[:-3])
    assert run.load_result("chunk-0") is None  # recomputed by the caller
    assert "chunk-0.result is damaged (truncated): recomputing it" in capsys.readouterr().err
    with pytest.raises(DamagedFileError, match="chunk-0.result is damaged"):
        run.load_result("chunk-0", on_damaged="raise")
    raw = bytearray((tmp_path / "results" / "blob.result").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "results" / "blob.result").write_bytes(bytes(raw))
    with pytest.raises(DamagedFileError, match="checksum mismatch"):
        run.load_result("blob", on_damaged="raise")
    with pytest.raises(ValueError, match="result name"):
        run.save_result("a/b", 1)


def test_files_are_readable_by_others(tmp_path, umask022):
    atomic_write(tmp_path / "x.txt", "hello")
    assert _mode(tmp_path / "x.txt") == 0o644
    run = RunDir(tmp_path / "run", Cfg())
    run.write_summary([dict(a=1)])
    run.save_checkpoint({"w": jnp.ones(2)}, dict(step=1))
    run.save_result("r", [1, 2])
    run.mark_done("k")
    for p in (
        "config.yaml",
        "summary.csv",
        "checkpoints/last.json",
        "checkpoints/last-1.eqx",
        "results/r.result",
        "checkpoints/done-k",
    ):
        assert _mode(run.path / p) == 0o644, p
    assert not [p for p in run.path.rglob(".*") if p.name != ".lock"]  # no temporary files left


def test_checkpoint_metadata_is_json_with_checksums(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint({"w": jnp.ones(2)}, dict(step=7, history=[dict(loss=float("nan"))]))
    meta = json.loads((run.checkpoints / "last.json").read_text())
    assert meta["step"] == 7 and meta["file"] == "last-7.eqx" and len(meta["sha256"]) == len(meta["meta_sha256"]) == 64
    _, meta = run.checkpoint({"w": jnp.zeros(2)})
    assert np.isnan(meta["history"][0]["loss"])


@pytest.mark.slow
def test_a_damaged_sweep_chunk_is_named_and_recomputed(tmp_path):
    """experiments.sweep keeps each chunk's rows as a checksummed result: flipping bytes in
    it makes the rerun say which file was damaged and compute that chunk again."""
    import subprocess
    import sys

    out = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--config",
        "configs/sweep_double_moon.yaml",
        "--quick",
        "--out",
        str(out),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    (chunk,) = (out / "results").glob("*.result")
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert chunk.name in second.stderr and "not recomputed" not in second.stderr
    assert first.stdout.strip().splitlines()[-1] == second.stdout.strip().splitlines()[-1]
