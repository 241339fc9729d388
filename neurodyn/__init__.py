"""neurodyn: learning in continuous-time neural networks on diffrax.

A network is a vector field `dr/dt = F(r, w, x)`. Four gradient estimators (RBP, EP, RTRL,
BPTT) are interchangeable behind `nd.value_and_grad`.
"""

import importlib.metadata

from . import (
    activations as activations,
    adjoint as adjoint,
    losses as losses,
    networks as networks,
    relaxation as relaxation,
    rtrl as rtrl,
)
from ._allocator import tune_cpu_allocator as tune_cpu_allocator
from ._batch import batch_value_and_grad as batch_value_and_grad
from ._dynamics import relax as relax, rollout as rollout
from ._iterate import (
    AbstractIterativeSolver as AbstractIterativeSolver,
    iterate as iterate,
    Solution as Solution,
)
from ._misc import batch_mean as batch_mean
from ._objectives import (
    AbstractObjective as AbstractObjective,
    SteadyState as SteadyState,
    Trajectory as Trajectory,
)
from ._options import IntegrationOptions as IntegrationOptions
from ._outcome import RESULTS as RESULTS
from ._value_and_grad import value_and_grad as value_and_grad
from .estimators import (
    AbstractEstimator as AbstractEstimator,
    AbstractSurrogateEstimator as AbstractSurrogateEstimator,
    BPTT as BPTT,
    EP as EP,
    RBP as RBP,
    RTRL as RTRL,
)


try:
    __version__ = importlib.metadata.version("neurodyn")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"


# The research layer (configs, run directories, training, sweeps, plotting, the fidelity
# harness, data sets, online learning) is imported on first use, so `import neurodyn` loads
# the numerical core only (and never matplotlib): `nd.training.fit` works as before.
_LAZY = (
    "config",
    "data",
    "distributed",
    "fidelity",
    "online",
    "plotting",
    "preprocessing",
    "runs",
    "sweeps",
    "training",
)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'neurodyn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
