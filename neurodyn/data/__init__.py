"""Data, offline only (nothing downloads at run time): sequence tasks and classification sets."""

from . import sequences as sequences
from ._classification import (
    digits as digits,
    double_moon as double_moon,
    idx_images as idx_images,
    split as split,
)
