"""Data, offline only (nothing downloads at run time).

- `double_moon(key, n, radius, width, distance)`: Haykin's two half rings.
- `digits()`: scikit-learn's bundled 8x8 digits (the `data` extra).
- `mnist1d(n, seed, ...)`: MNIST-1D from its generator (the `mnist1d` package, offline).
- `idx_images(path, split)`: MNIST / Fashion-MNIST from local IDX files.
- `split(X, y, ...)`: a deterministic train / valid / test split.
- `sequences`: adding problem, copy task, delayed XOR, a teacher RNN to mimic.
"""

from . import sequences as sequences
from ._classification import (
    digits as digits,
    double_moon as double_moon,
    idx_images as idx_images,
    mnist1d as mnist1d,
    split as split,
    write_idx as write_idx,
)
