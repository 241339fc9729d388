"""Gradient estimators, interchangeable behind `nd.value_and_grad`."""

from ._base import (
    AbstractEstimator as AbstractEstimator,
    AbstractGradientResidualEstimator as AbstractGradientResidualEstimator,
    AbstractSurrogateEstimator as AbstractSurrogateEstimator,
    check_estimator as check_estimator,
)
from ._bptt import BPTT as BPTT
from ._ep import EP as EP
from ._rbp import RBP as RBP
from ._rtrl import RTRL as RTRL
