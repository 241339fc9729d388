"""Strategies for RBP's adjoint solve `J^T v = -(dl/dr*)^T` (pass one as `nd.RBP(adjoint=...)`)."""

from ._adjoint_ode import AdjointODE as AdjointODE
from ._base import (
    AbstractAdjointSolve as AbstractAdjointSolve,
    AdjointSolution as AdjointSolution,
)
from ._dense import DenseLU as DenseLU
from ._linear import (
    JaxBiCGStab as JaxBiCGStab,
    JaxCG as JaxCG,
    JaxGMRES as JaxGMRES,
    Linear as Linear,
)
from ._neumann import Neumann as Neumann
