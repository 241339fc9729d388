"""RTRL's sensitivity propagation strategies (pass one as `nd.RTRL(sensitivity=...)`)."""

from ._base import (
    AbstractDenseSensitivity as AbstractDenseSensitivity,
    AbstractFieldSensitivity as AbstractFieldSensitivity,
    AbstractSensitivity as AbstractSensitivity,
    AbstractStochasticSensitivity as AbstractStochasticSensitivity,
)
from ._diagonal import Diagonal as Diagonal
from ._exact import Exact as Exact
from ._rflo import RFLO as RFLO
from ._snap1 import SnAp1 as SnAp1
from ._sparse_snap1 import SparseSnAp1 as SparseSnAp1
from ._uoro import UORO as UORO
