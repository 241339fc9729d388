"""Data, offline only: sequence tasks and (see the other modules) classification sets."""

from . import sequences as sequences
