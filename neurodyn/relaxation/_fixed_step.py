import equinox as eqx
import equinox.internal as eqxi
import jax.numpy as jnp
import jax.tree_util as jtu

from .._misc import rms_norm
from ._base import AbstractRelaxation, tolerance


class FixedStep(AbstractRelaxation):
    r"""Integrates `dr/dt = F(r)` with fixed steps of the `solver` until
    `rms(F(r)) < atol + rtol rms(r)` (measured as the last step difference over `dt0`).

    With `diffrax.Euler()` and `dt0 = 1` (the steady-state default) on `dr/dt = -r + f(.)`
    networks this is the fixed-point iteration `r <- f(W r + U x + b)`: it converges
    linearly at the rate `rho(I + dt0 J)` at `r*`.

    This is the loop BPTT differentiates (reverse mode through a checkpointed while loop),
    so it is the only strategy BPTT accepts.

    **Arguments:**

    - `check_every`: solver steps per convergence test (static). Each test (and loop
      iteration) costs a few reductions and, under `vmap`, a batch-wide `any`; testing every
      other step saves that at the price of at most one extra step. The default relaxation
      (`relaxation=None`) is `FixedStep(check_every=2)`: measured on CPU, 10% faster than
      testing every step (1.20 against 1.33 ms for n = 256, B = 32 in float32; 0.32 against
      0.35 ms for n = 32, B = 8 in float64). `max_steps` is never exceeded.
    - `patience`: convergence checks without the residual falling by 1% before the loop
      stops with `RESULTS.stagnated` (static; `None` never stops early). A relaxation that
      oscillates (a network trained into an unstable regime) or sits on a rounding floor
      above the tolerance (float32 matmuls in TF32 on a GPU) then costs `patience` checks,
      not `max_steps` steps. A contraction slower than 1% per `patience` checks would need
      far more than the default `max_steps` anyway.

    Cost: one evaluation of F per step (Euler), memory O(n).
    """

    check_every: int = eqx.field(static=True, default=1)
    patience: int | None = eqx.field(static=True, default=100)

    def __check_init__(self):
        if self.check_every < 1:
            raise ValueError(f"FixedStep needs check_every >= 1, got {self.check_every}.")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"FixedStep needs patience >= 1 or None, got {self.patience!r}.")

    def relax(self, term, args, r0, opts, *, kind, checkpoints):
        solver, dt = opts.solver, opts.dt0
        state0 = solver.init(term, 0.0, dt, r0, args)
        # A finite start value: an infinite or NaN residual then always means divergence.
        big = jnp.asarray(jnp.finfo(r0.dtype).max, dtype=r0.dtype)
        k = self.check_every

        patience = self.patience

        def cond(carry):
            r, _, step, res, (_, since) = carry
            go = (step < opts.max_steps) & ~(res <= tolerance(opts, r)) & jnp.isfinite(res)
            if patience is not None:
                go = go & (since < patience)
            return go

        def watch(stall, res):
            # The stagnation test: `anchor` is the residual at the last 1% improvement. A
            # residual far above it is divergence, left to run into the non-finite test
            # (reported as `nonfinite`), so it does not count as stalling.
            anchor, since = stall
            better = res < 0.99 * anchor
            stalled = ~better & (res <= 10 * anchor)
            return jnp.where(better, res, anchor), jnp.where(better, 0, since + stalled.astype(since.dtype))

        def body(carry):
            r, s, step, _, stall = carry
            if k == 1:
                t = step.astype(r.dtype) * dt
                r1, _, _, s1, _ = solver.step(term, t, t + dt, r, args, s, False)
                res = rms_norm(r1 - r) / dt
                return r1, s1, step + 1, res, watch(stall, res)
            r_prev = r
            for j in range(k):
                # The last chunk stops at max_steps; the residual is that of the last real step.
                live = step + j < opts.max_steps
                t = (step + j).astype(r.dtype) * dt
                r1, _, _, s1, _ = solver.step(term, t, t + dt, r, args, s, False)
                r_prev = jnp.where(live, r, r_prev)
                r = jnp.where(live, r1, r)
                s = jtu.tree_map(lambda a, b: jnp.where(live, a, b), s1, s)
            res = rms_norm(r - r_prev) / dt
            return r, s, jnp.minimum(step + k, opts.max_steps), res, watch(stall, res)

        init = (r0, state0, jnp.asarray(0), big, (big, jnp.asarray(0)))
        max_loops = -(-opts.max_steps // k)
        r, _, steps, res, _ = eqxi.while_loop(
            cond, body, init, max_steps=max_loops, kind=kind, checkpoints=checkpoints
        )
        return r, steps, res
