"""Networks as continuous-time vector fields `dr/dt = F(r, w, x)`."""

from ._base import (
    AbstractEnergyNetwork as AbstractEnergyNetwork,
    AbstractInputRescalable as AbstractInputRescalable,
    AbstractNetwork as AbstractNetwork,
    matvec as matvec,
    symmetric_part as symmetric_part,
)
from ._ctrnn import CTRNN as CTRNN
from ._elman import Elman as Elman
from ._hopfield import Hopfield as Hopfield
from ._layered import Layered as Layered
from ._layered_hopfield import LayeredHopfield as LayeredHopfield
from ._narx import NARX as NARX
from ._rmlp import RecurrentMLP as RecurrentMLP
from ._second_order import SecondOrder as SecondOrder
