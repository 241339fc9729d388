"""RTRL's sensitivity propagation strategies (pass one as `nd.RTRL(sensitivity=...)`)."""

from ._base import (
    AbstractDenseSensitivity as AbstractDenseSensitivity,
    AbstractFieldSensitivity as AbstractFieldSensitivity,
    AbstractSensitivity as AbstractSensitivity,
    AbstractStochasticSensitivity as AbstractStochasticSensitivity,
)
from ._diagonal import Diagonal as Diagonal
from ._exact import Exact as Exact
from ._joint import (
    contract as contract,
    integrate_interval_joint as integrate_interval_joint,
    joint_step as joint_step,
    report as report,
    sensitivity_aux as sensitivity_aux,
    zero_sensitivities as zero_sensitivities,
)
from ._rflo import RFLO as RFLO
from ._snap1 import SnAp1 as SnAp1
from ._sparse_snap1 import SparseSnAp1 as SparseSnAp1
from ._uoro import UORO as UORO
