"""Input preprocessing of the seed notes, fitted on the training data only:
mean removal, decorrelation (PCA or ZCA whitening) and variance equalisation."""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class Preprocessor(eqx.Module):
    """`x -> (x - mean) @ transform`: fit with `Preprocessor.fit(X_train, method)`, then apply
    the same transform to validation and test data."""

    mean: Float[Array, " d"]
    transform: Float[Array, "d k"]

    @staticmethod
    def fit(X, method: Literal["center", "standardize", "pca", "zca"] = "standardize", eps: float = 1e-5):
        """`center`: mean removal; `standardize`: + variance equalisation; `pca`: decorrelate
        and equalise variances in the principal axes; `zca`: the same, rotated back."""
        X = np.asarray(X, np.float64)
        mean = X.mean(0)
        Xc = X - mean
        d = X.shape[1]
        if method == "center":
            T = np.eye(d)
        elif method == "standardize":
            T = np.diag(1.0 / np.sqrt(Xc.var(0) + eps))
        elif method in ("pca", "zca"):
            cov = Xc.T @ Xc / len(X)
            vals, vecs = np.linalg.eigh(cov)
            T = vecs / np.sqrt(vals + eps)
            if method == "zca":
                T = T @ vecs.T
        else:
            raise ValueError(f"unknown preprocessing '{method}': use center, standardize, pca or zca")
        return Preprocessor(jnp.asarray(mean, jnp.float32), jnp.asarray(T, jnp.float32))

    def __call__(self, X):
        X = jnp.asarray(X)
        return (X - self.mean.astype(X.dtype)) @ self.transform.astype(X.dtype)
