"""Forward relaxation strategies (pass one as the `relaxation=` integration option)."""

from ._anderson import Anderson as Anderson
from ._backoff import Backoff as Backoff
from ._base import (
    AbstractRelaxation as AbstractRelaxation,
    AbstractSteppingRelaxation as AbstractSteppingRelaxation,
    RelaxationSolution as RelaxationSolution,
)
from ._fixed_step import FixedStep as FixedStep
from ._newton_krylov import NewtonKrylov as NewtonKrylov
