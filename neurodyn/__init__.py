"""neurodyn: learning in continuous-time neural networks on diffrax.

A network is a vector field `dr/dt = F(r, w, x)`. Four gradient estimators (RBP, EP, RTRL,
BPTT) are interchangeable behind `nd.value_and_grad`.
"""

import importlib.metadata

from . import (
    activations as activations,
    adjoint as adjoint,
    config as config,
    data as data,
    losses as losses,
    networks as networks,
    online as online,
    preprocessing as preprocessing,
    relaxation as relaxation,
    rtrl as rtrl,
    runs as runs,
    sweeps as sweeps,
    training as training,
)
from ._batch import batch_value_and_grad as batch_value_and_grad
from ._dynamics import relax as relax, rollout as rollout
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
    BPTT as BPTT,
    EP as EP,
    RBP as RBP,
    RTRL as RTRL,
)


try:
    __version__ = importlib.metadata.version("neurodyn")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"
