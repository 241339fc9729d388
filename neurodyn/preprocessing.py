"""Input preprocessing (LeCun et al. 1998, "Efficient BackProp"), fitted on the training data
only: mean removal, decorrelation (PCA or ZCA whitening) and variance equalisation.

```python
pre = nd.preprocessing.Preprocessor.fit(X_train, "zca")   # statistics of the training split
X_train, X_valid, X_test = pre(X_train), pre(X_valid), pre(X_test)
```
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real


class Preprocessor(eqx.Module):
    """`x -> (x - mean) @ transform`, an affine map fitted on training data.

    Fit it with `Preprocessor.fit(X_train, method)` and apply the same map to the validation
    and test data, so that no statistic of held-out data leaks into training.
    """

    mean: Float[Array, " d"]
    transform: Float[Array, "d k"]

    @staticmethod
    def fit(
        X: Real[ArrayLike, "N d"],
        method: Literal["center", "standardize", "pca", "zca"] = "standardize",
        eps: float = 1e-5,
    ) -> "Preprocessor":
        """Fits the map on `X` `(N, d)`.

        **Arguments:**

        - `X`: the training inputs.
        - `method`: `center`: mean removal; `standardize`: mean removal and variance
          equalisation per input; `pca`: decorrelation and variance equalisation in the
          principal axes (`C^{-1/2}` as `Lambda^{-1/2} V^T`, the rotated coordinates); `zca`:
          the same, rotated back to the input axes (`V Lambda^{-1/2} V^T`, the whitening
          closest to the original inputs).
        - `eps`: added to the variances (constant inputs, such as the digits' border pixels,
          are left at zero rather than divided by zero).

        **Returns:** a `Preprocessor`.
        """
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
            T = vecs / np.sqrt(np.maximum(vals, 0.0) + eps)[None]
            if method == "zca":
                T = T @ vecs.T
        else:
            raise ValueError(f"unknown preprocessing '{method}': use center, standardize, pca or zca")
        dtype = jnp.zeros(()).dtype  # float64 when x64 is on, else float32
        return Preprocessor(jnp.asarray(mean, dtype), jnp.asarray(T, dtype))

    def __call__(self, X: Real[ArrayLike, "*batch d"]) -> Float[Array, "*batch k"]:
        """Applies the map to `X` `(..., d)` (one example or a batch)."""
        X = jnp.asarray(X)
        mean = self.mean.astype(X.dtype).reshape((1,) * (X.ndim - 1) + self.mean.shape)
        return (X - mean) @ self.transform.astype(X.dtype)
