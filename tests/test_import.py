"""`import neurodyn` loads the numerical core only: the research layer (configs, runs,
training, sweeps, plotting, fidelity, data) and matplotlib load on first use."""

import os
import platform
import subprocess
import sys

import pytest


def test_import_loads_the_core_only_and_the_research_layer_on_use():
    code = (
        "import sys, neurodyn as nd\n"
        "lazy = ['neurodyn.config', 'neurodyn.runs', 'neurodyn.training', 'neurodyn.sweeps', 'neurodyn.plotting',"
        " 'neurodyn.fidelity', 'neurodyn.data', 'matplotlib']\n"
        "print(sorted(m for m in lazy if m in sys.modules))\n"
        "nd.training.fit, nd.fidelity.compare, nd.plotting.save, nd.config.ConfigError\n"
        "print(sorted(m for m in lazy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.strip().splitlines()
    assert before == "[]"
    assert "'neurodyn.training'" in after and "'neurodyn.plotting'" in after and "'neurodyn.fidelity'" in after


def _arenas_after_a_computation(tune: bool) -> tuple[str, int]:
    # glibc's own account of its arenas (`malloc_info`'s <heap> entries), after XLA's worker
    # threads have run a computation: each thread that allocates takes an arena of its own
    # unless M_ARENA_MAX says otherwise.
    code = (
        "import ctypes, os, sys, tempfile, neurodyn as nd, jax, jax.numpy as jnp\n"
        f"print(nd.tune_cpu_allocator() if {tune} else 'untouched')\n"
        "x = jnp.ones((512, 512))\n"
        "for _ in range(3): jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x @ x) @ x)(x))\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]\n"
        "libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]\n"
        "fd, path = tempfile.mkstemp(suffix='.xml'); os.close(fd)\n"
        "fp = libc.fopen(path.encode(), b'w'); libc.malloc_info(0, fp); libc.fclose(fp)\n"
        "print(open(path).read().count('<heap nr=')); os.remove(path)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    first, arenas = out.stdout.split()
    return first, int(arenas)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"), reason="glibc's allocator"
)
def test_tune_cpu_allocator_keeps_xla_threads_in_one_arena_and_import_leaves_it_alone():
    untouched, arenas = _arenas_after_a_computation(tune=False)
    assert untouched == "untouched" and arenas > 1  # import alone changes nothing
    applied, arenas = _arenas_after_a_computation(tune=True)
    assert applied == "True" and arenas == 1


def test_tune_cpu_allocator_does_nothing_off_glibc(monkeypatch):
    import neurodyn as nd

    monkeypatch.setattr(sys, "platform", "darwin")
    assert nd.tune_cpu_allocator() is False
