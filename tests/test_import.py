"""`import neurodyn` loads the numerical core only: the research layer (configs, runs,
training, sweeps, plotting, fidelity, data) and matplotlib load on first use."""

import subprocess
import sys


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
