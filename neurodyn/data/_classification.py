"""Classification data sets, offline: generated, bundled with scikit-learn, or local files."""

import gzip
import os
import pathlib
import struct
from typing import Any

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped


def double_moon(
    key: PRNGKeyArray, n: int = 1000, *, radius: float = 10.0, width: float = 6.0, distance: float = 1.0
) -> tuple[Float[Array, "n 2"], Int[Array, " n"]]:
    """Haykin's double moon: two half rings of the given `radius` and `width`, the lower one
    shifted right by `radius` and down by `distance` (negative distance interleaves them).

    **Returns:** `(X, y)`, `X` `(n, 2)` float, `y` `(n,)` int in {0, 1} (half each)."""
    k1, k2, k3 = jr.split(key, 3)
    half = n // 2
    r = radius + width * (jr.uniform(k1, (n,)) - 0.5)
    theta = jnp.pi * jr.uniform(k2, (n,))
    upper = jnp.stack([r[:half] * jnp.cos(theta[:half]), r[:half] * jnp.sin(theta[:half])], axis=1)
    lower = jnp.stack([r[half:] * jnp.cos(theta[half:]) + radius, -r[half:] * jnp.sin(theta[half:]) - distance], axis=1)
    X = jnp.concatenate([upper, lower])
    y = jnp.concatenate([jnp.zeros(half, jnp.int32), jnp.ones(n - half, jnp.int32)])
    perm = jr.permutation(k3, n)
    return X[perm], y[perm]


def digits() -> tuple[Float[np.ndarray, "1797 64"], Int[np.ndarray, " 1797"]]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), pixels scaled to [0, 1].

    **Returns:** `(X, y)`, `X` `(1797, 64)`, `y` `(1797,)` int in 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            'the digits data set ships with scikit-learn: install it with `pip install -e ".[data]"` '
            "(or `pip install scikit-learn`)."
        ) from None
    X, y = load_digits(return_X_y=True)
    return np.asarray(X, np.float32) / 16.0, np.asarray(y, np.int32)


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_images(path: str | os.PathLike, split: str = "train") -> tuple[Float[np.ndarray, "N d"], Int[np.ndarray, " N"]]:
    """MNIST / Fashion-MNIST from local IDX files (nothing downloads): `path` is a directory
    holding `train-images-idx3-ubyte[.gz]` and `train-labels-idx1-ubyte[.gz]` (and the
    `t10k-*` files for `split="test"`), as distributed by LeCun et al. and Zalando.

    **Returns:** `(X, y)` with pixels in [0, 1], `X` `(N, rows * cols)` float32, `y` int32.

    A missing file is a `FileNotFoundError` naming the expected path."""
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = pathlib.Path(path)

    def read(stem, magic):
        for name in (stem, stem + ".gz"):
            p = path / name
            if p.exists():
                data = p.read_bytes()
                data = gzip.decompress(data) if name.endswith(".gz") else data
                if struct.unpack(">I", data[:4])[0] != magic:
                    raise ValueError(
                        f"{p} is not an IDX file (magic number {struct.unpack('>I', data[:4])[0]}, expected {magic})"
                    )
                return data
        raise FileNotFoundError(
            f"expected {path / stem} (or {stem}.gz): put MNIST or Fashion-MNIST's IDX files there "
            "yourself (set data.idx_path in the config); neurodyn never downloads at run time."
        )

    images_file, labels_file = IDX_FILES[split]
    imgs, labels = read(images_file, 2051), read(labels_file, 2049)
    _, n, rows, cols = struct.unpack(">IIII", imgs[:16])
    X = (
        np.frombuffer(imgs, np.uint8, offset=16, count=n * rows * cols).reshape(n, rows * cols).astype(np.float32)
        / 255.0
    )
    y = np.frombuffer(labels, np.uint8, offset=8, count=n).astype(np.int32)
    return X, y


def write_idx(path: str | os.PathLike, X: ArrayLike, y: ArrayLike, split: str = "train") -> None:
    """Writes uint8 images `X` `(N, rows, cols)` and labels `y` as IDX files (tests, and
    converting other data to the format `idx_images` reads)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    X, y = np.asarray(X, np.uint8), np.asarray(y, np.uint8)
    images_file, labels_file = IDX_FILES[split]
    (path / images_file).write_bytes(struct.pack(">IIII", 2051, *X.shape) + X.tobytes())
    (path / labels_file).write_bytes(struct.pack(">II", 2049, len(y)) + y.tobytes())


def mnist1d(n: int = 5000, *, seed: int = 42, **args: Any) -> tuple[Float[np.ndarray, "n 40"], Int[np.ndarray, " n"]]:
    """MNIST-1D (Greydanus 2020, "Scaling down deep learning"), from its own generator: the
    `mnist1d` package (the `data` extra: `pip install "neurodyn[data]"`). Generated here,
    offline (`mnist1d.data.make_dataset`; its `get_dataset`, which downloads, is not used).

    With the defaults (`n=5000`, `seed=42`) this is the published data set: 40 points per
    example, standardised over the whole set, the first 4000 examples the training set and the
    last 1000 the test set, on which the published baselines were measured (logistic regression
    32%, MLP 68%, CNN 94%, GRU 91% test accuracy). `args` override the generator's other
    arguments (`mnist1d.data.get_dataset_args()`: `padding`, `scale_coeff`, `max_translation`,
    `corr_noise_scale`, `iid_noise_scale`, `shear_scale`, `shuffle_seq`, `final_seq_length`,
    `train_split`, ...).

    The generator seeds NumPy's and Python's global random state; both are restored afterwards.

    **Returns:** `(X, y)`, `X` `(n, 40)` float32, `y` `(n,)` int32 in 0..9: the training
    examples (`int(train_split * n)`, 4000 by default) first, then the test examples.
    """
    try:
        import mnist1d.data as m1d
    except ImportError:
        raise ImportError(
            "MNIST-1D comes from its generator, the `mnist1d` package: install it with "
            '`pip install neurodyn[data]` (or `pip install -e ".[data]"`, or `pip install mnist1d`).'
        ) from None
    import random

    config = dict(vars(m1d.get_dataset_args()))  # the defaults, from their ObjectView
    unknown = set(args) - set(config)
    if unknown:
        raise TypeError(f"mnist1d: unknown generator argument(s) {sorted(unknown)}; known: {sorted(config)}")
    config.update(args, num_samples=n, seed=seed)
    config.pop("url", None)  # never downloads
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = m1d.make_dataset(m1d.ObjectView(config))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    X = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int32)
    return X, y


def split(
    X: Shaped[ArrayLike, "N ..."],
    y: Shaped[ArrayLike, "N ..."],
    *,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A deterministic shuffled train / valid / test split."""
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(n * test_fraction), int(n * valid_fraction)
    te, va, tr = perm[:n_test], perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    return (X[tr], y[tr]), (X[va], y[va]), (X[te], y[te])
