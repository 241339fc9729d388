"""Classification data sets, offline: generated, bundled with scikit-learn, or local files."""

import gzip
import pathlib
import struct

import jax.numpy as jnp
import jax.random as jr
import numpy as np


def double_moon(key, n: int = 1000, *, radius: float = 10.0, width: float = 6.0, distance: float = 1.0):
    """Haykin's double moon: two half rings of the given `radius` and `width`, the lower one
    shifted right by `radius` and down by `distance` (negative distance interleaves them).

    **Returns:** `(X, y)`, `X` `(n, 2)` float, `y` `(n,)` int in {0, 1} (half each)."""
    k1, k2, k3 = jr.split(key, 3)
    half = n // 2
    r = radius + width * (jr.uniform(k1, (n,)) - 0.5)
    theta = jnp.pi * jr.uniform(k2, (n,))
    upper = jnp.stack([r[:half] * jnp.cos(theta[:half]), r[:half] * jnp.sin(theta[:half])], axis=1)
    lower = jnp.stack(
        [r[half:] * jnp.cos(theta[half:]) + radius, -r[half:] * jnp.sin(theta[half:]) - distance], axis=1
    )
    X = jnp.concatenate([upper, lower])
    y = jnp.concatenate([jnp.zeros(half, jnp.int32), jnp.ones(n - half, jnp.int32)])
    perm = jr.permutation(k3, n)
    return X[perm], y[perm]


def digits():
    """scikit-learn's bundled 8x8 digits (1797 images, no download), pixels scaled to [0, 1].

    **Returns:** `(X, y)`, `X` `(1797, 64)`, `y` `(1797,)` int in 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits data set ships with scikit-learn: install it with `pip install -e \".[data]\"` "
            "(or `pip install scikit-learn`)."
        ) from None
    d = load_digits()
    return np.asarray(d.data, np.float32) / 16.0, np.asarray(d.target, np.int32)


def idx_images(path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST / Fashion-MNIST from local IDX files: `path` is a directory holding
    `train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]` (nothing downloads).

    **Returns:** `(X, y)` with pixels in [0, 1], `X` `(N, 784)`."""
    path = pathlib.Path(path)

    def read(stem):
        for name in (stem, stem + ".gz"):
            p = path / name
            if p.exists():
                data = p.read_bytes()
                return gzip.decompress(data) if name.endswith(".gz") else data
        raise FileNotFoundError(
            f"expected {path / stem} (or .gz): download MNIST or Fashion-MNIST's IDX files there "
            "yourself; neurodyn never downloads at run time."
        )

    imgs, labels = read("train-images-idx3-ubyte"), read("train-labels-idx1-ubyte")
    _, n, rows, cols = struct.unpack(">IIII", imgs[:16])
    X = np.frombuffer(imgs, np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32) / 255.0
    y = np.frombuffer(labels, np.uint8, offset=8).astype(np.int32)
    return X, y


def split(X, y, *, test_fraction: float = 0.2, valid_fraction: float = 0.1, seed: int = 0):
    """A deterministic shuffled train / valid / test split."""
    n = len(X)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(n * test_fraction), int(n * valid_fraction)
    te, va, tr = perm[:n_test], perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    X, y = np.asarray(X), np.asarray(y)
    return (X[tr], y[tr]), (X[va], y[va]), (X[te], y[te])
