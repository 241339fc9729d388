"""Type aliases shared across neurodyn (jaxtyping, as in diffrax/_custom_types.py)."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Real, Shaped


State: TypeAlias = Float[Array, " n"]
Input: TypeAlias = Float[ArrayLike, " n_in"]
Target: TypeAlias = Shaped[ArrayLike, "..."]
Times: TypeAlias = Real[ArrayLike, " T"]
Info: TypeAlias = dict[str, Any]
Grads: TypeAlias = PyTree[Float[Array, "..."] | None]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Grads",
    "Info",
    "Input",
    "Int",
    "PyTree",
    "Real",
    "State",
    "Target",
    "Times",
]
