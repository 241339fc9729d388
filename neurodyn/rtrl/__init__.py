"""RTRL's sensitivity propagation strategies (pass one as `nd.RTRL(sensitivity=...)`)."""

from ._base import AbstractSensitivity as AbstractSensitivity
from ._diagonal import Diagonal as Diagonal
from ._exact import Exact as Exact
from ._snap1 import SnAp1 as SnAp1
