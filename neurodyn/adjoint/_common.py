import jax.numpy as jnp

from .._misc import matmul_roundoff, rms_norm


def default_rtol(dtype) -> float:
    # float32 Krylov stagnates near 1e-6 relative; float64 can go far tighter. Floored, as the
    # relaxation's tolerances are, at 8x the rounding of the matrix products (TF32 on a GPU).
    return max(1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-5, 8 * matmul_roundoff(dtype))


def relative_residual(matvec, v, g):
    scale = rms_norm(g)
    return rms_norm(matvec(v) + g) / jnp.where(scale > 0, scale, 1)


def adjoint_solution(v, converged, steps, residual):
    from ._base import AdjointSolution

    return AdjointSolution(v, jnp.asarray(converged), jnp.asarray(steps), residual)
