from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp

from .._custom_types import RealState
from .._iterate import AbstractIterativeSolver, iterate
from .._misc import all_finite, rms_norm
from .._options import IntegrationOptions
from ._base import AbstractRelaxation, RelaxationSolution, RelaxKind, TermArgs


class Anderson(AbstractRelaxation):
    r"""Anderson acceleration (Walker & Ni 2011) of the solver's step map
    `Phi(r) = r + dt0 F(r) + ...`.

    Keeps the last `m` iterates `r_i` and their images `Phi(r_i)`, and moves to the
    combination `r <- sum_i a_i ((1 - beta) r_i + beta Phi(r_i))` whose residual
    `sum_i a_i (Phi(r_i) - r_i)` is smallest (least squares with `sum_i a_i = 1`,
    Tikhonov-regularised by `lam` relative to the largest squared residual). On a linear
    map it is GMRES in disguise; on these networks it needs fewer evaluations of F than
    the plain iteration when that iteration converges slowly (gain near 1, small `dt0`).

    **Arguments:**

    - `m`: history length (static).
    - `beta`: mixing (1: undamped).
    - `lam`: relative regularisation of the least-squares problem (keep it well above
      float32's rounding, ~1e-7).

    Cost per step: one evaluation of the step map plus O(m^2 n + m^3) for the mixing;
    memory O(m n). Stopping rule and reported residual as `FixedStep`.

    !!! warning

        Not differentiable through its iterations in the BPTT sense (the mixing is not a
        time step): BPTT always uses `FixedStep`. When the plain iteration already contracts
        fast (the defaults, ~13 steps to float32 tolerance) the mixing overhead can cost
        more than the steps it saves; see the README's relaxation table.
    """

    m: int = eqx.field(static=True, default=5)
    beta: float = 1.0
    lam: float = 1e-4

    def __check_init__(self):
        if self.m < 1:
            raise ValueError(f"Anderson needs a history of m >= 1 iterates, got m={self.m}.")

    def relax(
        self,
        term: diffrax.AbstractTerm,
        args: TermArgs,
        r0: RealState,
        opts: IntegrationOptions,
        *,
        kind: RelaxKind,
        checkpoints: int | None,
    ) -> RelaxationSolution:
        it = _AndersonIteration(term, opts.solver, opts.dt0, self.m, self.beta, self.lam, opts.rtol, opts.atol)
        # The iterate is the pair (r, Phi(r_prev)): the reported state is the last image,
        # whose step difference was measured.
        sol = iterate(it, (r0, r0), args, max_iterations=opts.max_steps, kind=kind, checkpoints=checkpoints)
        return RelaxationSolution(sol.value[1], sol.iterations, sol.residual, sol.result)


class _AndersonIteration(AbstractIterativeSolver):
    term: diffrax.AbstractTerm
    solver: diffrax.AbstractSolver
    dt: float = eqx.field(static=True)
    m: int = eqx.field(static=True)
    beta: Any
    lam: Any
    rtol: Any
    atol: Any

    def init(self, y0, args):
        r0, _ = y0
        X0 = jnp.zeros((self.m,) + r0.shape, r0.dtype)
        return X0, X0, self.solver.init(self.term, 0.0, self.dt, r0, args)

    def step(self, y, state, args, step):
        r, _ = y
        X, G, state0 = state
        m, dtype, dt = self.m, r.dtype, self.dt
        # made_jump: the iterates jump, so FSAL solvers must not reuse a stale F.
        g, _, _, _, _ = self.solver.step(self.term, 0.0, dt, r, args, state0, True)
        res = rms_norm(g - r) / dt
        slot = step % m
        X = X.at[slot].set(r)
        G = G.at[slot].set(g)
        valid = (jnp.arange(m) <= step).astype(dtype)
        Fh = (G - X) * valid[:, None]
        H = Fh @ Fh.T
        scale = jnp.max(jnp.diag(H))
        scale = jnp.where(scale > 0, scale, 1)
        eye = jnp.eye(m, dtype=dtype)
        # Unused slots get a unit diagonal and no constraint weight, so their a_i = 0.
        H = H / scale + self.lam * eye * valid[:, None] + eye * (1 - valid)[:, None]
        A = jnp.zeros((m + 1, m + 1), dtype)
        A = A.at[0, 1:].set(valid).at[1:, 0].set(valid).at[1:, 1:].set(H)
        rhs = jnp.zeros((m + 1,), dtype).at[0].set(1)
        a = jnp.linalg.solve(A, rhs)[1:]
        r_new = a @ ((1 - self.beta) * X + self.beta * G)
        # A degenerate mixing (singular system in float32) falls back to the plain step.
        r_new = jnp.where(all_finite(r_new), r_new, g)
        return (r_new, g), (X, G, state0), res

    def tolerance(self, y, args):
        del args
        # Judged at the image g = Phi(r) the residual was measured at.
        return self.atol + self.rtol * rms_norm(y[1])
