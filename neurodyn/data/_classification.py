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


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_images(path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
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
                    raise ValueError(f"{p} is not an IDX file (magic number {struct.unpack('>I', data[:4])[0]}, expected {magic})")
                return data
        raise FileNotFoundError(
            f"expected {path / stem} (or {stem}.gz): put MNIST or Fashion-MNIST's IDX files there "
            "yourself (set data.idx_path in the config); neurodyn never downloads at run time."
        )

    images_file, labels_file = IDX_FILES[split]
    imgs, labels = read(images_file, 2051), read(labels_file, 2049)
    _, n, rows, cols = struct.unpack(">IIII", imgs[:16])
    X = np.frombuffer(imgs, np.uint8, offset=16, count=n * rows * cols).reshape(n, rows * cols).astype(np.float32) / 255.0
    y = np.frombuffer(labels, np.uint8, offset=8, count=n).astype(np.int32)
    return X, y


def write_idx(path, X, y, split: str = "train") -> None:
    """Writes uint8 images `X` `(N, rows, cols)` and labels `y` as IDX files (tests, and
    converting other data to the format `idx_images` reads)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    X, y = np.asarray(X, np.uint8), np.asarray(y, np.uint8)
    images_file, labels_file = IDX_FILES[split]
    (path / images_file).write_bytes(struct.pack(">IIII", 2051, *X.shape) + X.tobytes())
    (path / labels_file).write_bytes(struct.pack(">II", 2049, len(y)) + y.tobytes())


# Ten 12-point templates, one per class, in the spirit of MNIST-1D's hand-drawn 1-D "digits"
# (Greydanus 2020); drawn for neurodyn, not copied: each is a distinct bump/step profile.
_MNIST1D_TEMPLATES = np.asarray(
    [
        [0, 1, 2, 2.5, 2.75, 3, 3, 2.75, 2.5, 2, 1, 0],
        [0, -2, -2, -1.6, -1.2, -0.8, -0.4, 0, 0.4, 0.8, 0, 0],
        [0, 1, 1.5, 1.5, 1, 0.25, -0.25, -1, -1.5, -1.5, -1, 0],
        [0, 1, 1.5, 1.5, 1, 0, 0, 1, 1.5, 1.5, 1, 0],
        [0, -0.6, -1.2, -1.8, -2.4, -2.4, 0, 0, 0, 0, 0, 0],
        [0, -2, -2, -2, -2, 0, 1, 1.5, 1.5, 1, -0.5, 0],
        [0, -1, -1.5, -1.75, -2, -2, -2, -2, -1.75, -1.5, -1, 0],
        [0, 2, 2, 1.6, 1.2, 0.8, 0.4, 0, -0.4, -0.8, 0, 0],
        [0, -1, -1.5, -1.5, -1, 0, 0, -1, -1.5, -1.5, -1, 0],
        [0, -1, -1.5, -1.5, -1, 0, 0, 0, 0, -0.3, -0.7, 0],
    ]
)


def mnist1d(
    n: int = 5000,
    *,
    seed: int = 0,
    length: int = 40,
    padding: tuple[int, int] = (36, 60),
    max_translation: int = 48,
    scale_coeff: float = 0.4,
    shear_scale: float = 0.75,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 0.02,
):
    """A procedural MNIST-1D-like data set, generated here (no download): the recipe of
    Greydanus (2020), "Scaling down deep learning", on neurodyn's own ten templates.

    Each example takes its class's 12-point template, pads it with zeros (a random amount in
    `padding`), shifts it circularly by up to `max_translation`, scales it by
    `1 + scale_coeff u` (u uniform in [-1, 1]), adds a random linear trend (shear) of slope up
    to `shear_scale`, smooth correlated noise (white noise blurred by a Gaussian of width 2,
    scaled by `corr_noise_scale`) and white noise (`iid_noise_scale`), and is resampled
    linearly to `length` points. The classes are balanced (`n` rounded down to a multiple of
    10), the order shuffled.

    **Returns:** `(X, y)`, `X` `(n, length)` float32, `y` `(n,)` int32 in 0..9.
    Deterministic in `seed` (NumPy's generator), identical on every platform.
    """
    rng = np.random.default_rng(seed)
    k = len(_MNIST1D_TEMPLATES)
    y = np.repeat(np.arange(k), n // k)
    rng.shuffle(y)
    radius = 6
    blur = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 2.0) ** 2)
    blur /= blur.sum()
    X = np.empty((len(y), length), np.float64)
    for i, c in enumerate(y):
        x = np.concatenate([_MNIST1D_TEMPLATES[c], np.zeros(rng.integers(padding[0], padding[1] + 1))])
        x = np.roll(x, rng.integers(0, max_translation + 1))
        x = x * (1 + scale_coeff * rng.uniform(-1, 1))
        t = np.linspace(-1, 1, len(x))
        x = x + shear_scale * rng.uniform(-1, 1) * t
        x = x + corr_noise_scale * np.convolve(rng.standard_normal(len(x)), blur, mode="same") * np.sqrt(len(blur))
        x = np.interp(np.linspace(0, len(x) - 1, length), np.arange(len(x)), x)
        X[i] = x + iid_noise_scale * rng.standard_normal(length)
    return X.astype(np.float32), y.astype(np.int32)


def split(X, y, *, test_fraction: float = 0.2, valid_fraction: float = 0.1, seed: int = 0):
    """A deterministic shuffled train / valid / test split."""
    n = len(X)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(n * test_fraction), int(n * valid_fraction)
    te, va, tr = perm[:n_test], perm[n_test : n_test + n_valid], perm[n_test + n_valid :]
    X, y = np.asarray(X), np.asarray(y)
    return (X[tr], y[tr]), (X[va], y[va]), (X[te], y[te])
