"""Type aliases shared across neurodyn (jaxtyping, as in diffrax/_custom_types.py).

They type the seams between the strategy families (networks, relaxations, adjoint solves,
estimators, objectives, activations, RTRL sensitivities); the tests check them at run time
with `jaxtyping.jaxtyped(typechecker=beartype.beartype)`.

States, inputs and readouts are `Inexact`, not `Float`: holomorphic equilibrium propagation
(Laborieux and Zenke, 2022) runs the same networks, activations and losses on complex arrays.
"""

from collections.abc import Sequence
from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Inexact, Int, PyTree, Real, Shaped


# A time: a Python float (`net(0.0, r, x)`) or a 0-d array (diffrax passes traced times).
Time: TypeAlias = Real[ArrayLike, ""]
# One state `r` of a network, `(n_state,)`.
State: TypeAlias = Inexact[Array, " n"]
# A real state: relaxations and adjoint solves work on real vectors (holomorphic EP relaxes
# the pair `(Re z, Im z)`).
RealState: TypeAlias = Float[Array, " n"]
# The states at the save times of a trajectory, `(T, n_state)`.
States: TypeAlias = Inexact[Array, "T n"]
# A steady state `(n,)` or the states along a trajectory `(T, n)`.
StateOrStates: TypeAlias = Inexact[Array, "*T n"]
# One input `x` of a network, `(n_in,)`.
Input: TypeAlias = Inexact[Array, " n_in"]
# One example's input for an objective: `(n_in,)` (steady state) or `(T, n_in)` (trajectory).
ExampleInput: TypeAlias = Inexact[Array, "*T n_in"]
# What the loss sees of a state, `(n_out,)`.
Readout: TypeAlias = Inexact[Array, " n_out"]
# A target: float vectors of the readout's shape, or integer class indices.
Target: TypeAlias = Shaped[ArrayLike, "..."]
# Save times of a trajectory, concrete and increasing: an array or a sequence of floats.
Times: TypeAlias = Real[ArrayLike, " T"] | Sequence[float]
# A scalar loss (complex inside holomorphic EP).
Scalar: TypeAlias = Inexact[Array, ""]
Info: TypeAlias = dict[str, Any]
# Gradients: shaped like `eqx.filter(net, eqx.is_inexact_array)` (None off the parameters).
Grads: TypeAlias = PyTree[Float[Array, "..."] | None]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "ExampleInput",
    "Float",
    "Grads",
    "Inexact",
    "Info",
    "Input",
    "Int",
    "PyTree",
    "Readout",
    "Real",
    "RealState",
    "Scalar",
    "Shaped",
    "State",
    "StateOrStates",
    "States",
    "Target",
    "Time",
    "Times",
]
