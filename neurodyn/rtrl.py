"""RTRL's sensitivity propagation strategies (pass one as `nd.RTRL(sensitivity=...)`)."""

from .estimators._rtrl import (
    AbstractSensitivity as AbstractSensitivity,
    Diagonal as Diagonal,
    Exact as Exact,
    SnAp1 as SnAp1,
)
