import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from .._dynamics import (
    integrate_interval,
    relax_info,
    relax_loop,
    rollout_loop,
    solver_init,
    solver_step,
    time_grid,
    tree_where,
)
from .._iterate import Progress
from .._misc import all_finite, rms_norm
from .._objectives import SteadyState, Trajectory
from .._outcome import RESULTS
from ._base import AbstractGradientResidualEstimator, weighted_sum


class BPTT(AbstractGradientResidualEstimator):
    r"""Backpropagation through time: reverse-mode differentiation of the discretised solve.

    For a trajectory objective it differentiates the fixed-step rollout; for a steady-state
    objective it differentiates the relaxation loop itself. The gradient is exact for the
    discretised system (Werbos 1990: `s(t) = D(t)(dR/dx(t) + W^T s(t+1))`,
    `dW = sum_t s(t) x(t-1)^T` for the Euler dt = 1 network).

    Cost: time `O(n^2 T + n m T)` (one forward and one backward sweep), memory `O(n T)` for
    the stored states, or `O(n c)` with `c` checkpoints and extra recomputation.

    **Arguments:**

    - `truncation`: `h`, the depth of truncated BPTT (Williams & Peng 1990's truncation). For a
      trajectory each loss term `l_k` backpropagates through the last `h` intervals only
      (all `T` terms in parallel, `O(T h)` work). For a steady state the gradient flows
      through the last `h` solver steps from `r*` (a `h`-term Neumann series of the adjoint).
      `None` (default) is full BPTT.
    - `checkpoints`: `None` (default) stores every state for the backward pass (fastest);
      an integer `c` keeps `c` checkpoints and recomputes the rest (memory against time).
      For a steady state through `nd.value_and_grad` the relaxation loop is checkpointed,
      `None` letting equinox pick the number from `max_steps`.
    - `stored_steps`: for a steady state through `nd.batch_value_and_grad`, the relaxation
      steps kept per example at most (default 128): each step's state and the residuals of
      its linearisation (memory a few times `stored_steps x B x n`). The gradient
      differentiates exactly the steps each example took, at about the cost of the forward
      solve plus one transposed step per step (the weight gradients are matrix products
      over 8 steps of the batch at once). The buffers start with room for 8 steps and grow
      fourfold, the relaxation going on, up to `stored_steps`; a longer relaxation goes on
      in segments of `stored_steps` steps keeping each one's first state, and the backward
      pass relaxes each segment again before reversing it (one more forward sweep; memory
      `O(stored_steps + max_steps / stored_steps)` states per example). Under an outer
      `vmap` (a sweep) each size's branch runs for every point while one point needs it.

    !!! warning

        Differentiating through a steady-state relaxation costs memory and time in the
        number of relaxation steps; `nd.RBP()` gets the same gradient at the cost of one
        adjoint solve once the relaxation has converged.
    """

    truncation: int | None = eqx.field(static=True, default=None)
    checkpoints: int | None = eqx.field(static=True, default=None)
    stored_steps: int = eqx.field(static=True, default=128)
    objectives = (SteadyState, Trajectory)

    def __check_init__(self):
        if self.truncation is not None and self.truncation < 1:
            raise ValueError(f"BPTT truncation must be a positive integer or None, got {self.truncation}.")
        if self.checkpoints is not None and self.checkpoints < 1:
            raise ValueError(f"BPTT checkpoints must be a positive integer or None, got {self.checkpoints}.")
        if not isinstance(self.stored_steps, int) or self.stored_steps < 1:
            raise ValueError(f"BPTT stored_steps must be a positive integer, got {self.stored_steps!r}.")

    def _loss_grads_info(self, net, x, y, objective, options):
        # One example: reverse mode through the checkpointed loop. (The stored-states path
        # of the batch chooses between itself and this loop with a batch-level cond, which
        # a vmap over examples would turn into running both.)
        if isinstance(objective, SteadyState):
            fn = self._steady_state
        elif self.truncation is None and self.checkpoints is None:
            one = jnp.ones((1,), x.dtype)
            loss, grads, info = _two_phase_trajectory(
                net, x[None], jax.tree.map(lambda a: a[None], y), one, objective, options
            )
            info.pop("loss")
            return loss, grads, jax.tree.map(lambda a: a[0], info)
        else:
            fn = self._trajectory
        (loss, info), grads = eqx.filter_value_and_grad(fn, has_aux=True)(net, x, y, objective, options)
        return loss, grads, info

    def batch_value_and_grad(self, net, xs, ys, weights, objective, options):
        if isinstance(objective, Trajectory) and self.truncation is None and self.checkpoints is None:
            return _two_phase_trajectory(net, xs, ys, weights, objective, options)

        if isinstance(objective, SteadyState) and self.truncation is None:
            return self._stored_or_checkpointed(net, xs, ys, weights, objective, options)
        params, static = eqx.partition(net, eqx.is_inexact_array)

        # One reverse pass through the vmapped solve, the parameters shared across the
        # batch: every step's weight gradient is one matrix product over the batch.
        def total(p):
            m = eqx.combine(p, static)

            def one(x, y):
                if isinstance(objective, Trajectory):
                    return self._trajectory(m, x, y, objective, options)
                return self._steady_state(m, x, y, objective, options)

            losses, info = jax.vmap(one)(xs, ys)
            return weighted_sum(weights, losses), dict(info, loss=losses)

        (loss, info), grads = jax.value_and_grad(total, has_aux=True)(params)
        return loss, grads, info

    def _stored_or_checkpointed(self, net, xs, ys, weights, objective, options):
        """Full BPTT of a batch's relaxations: the stored-states path (in segments past
        `stored_steps` steps) for the fixed-step relaxation BPTT differentiates, reverse mode
        through the checkpointed loop for the other stepping strategies."""
        relaxation = options.relaxation
        if relaxation is not None:
            # The same refusal as the checkpointed loop's for strategies BPTT cannot reverse.
            from ..relaxation import FixedStep

            if not isinstance(relaxation, FixedStep) or relaxation.check_every != 1:
                return self._checkpointed_batch(net, xs, ys, weights, objective, options)
        S = min(self.stored_steps, options.max_steps)
        # Room for a few steps first, the usual case, then four times more at each size,
        # the same relaxation going on. XLA on the CPU writes every byte of a buffer when
        # it is created: for a (B, n) = (32, 256) batch each stored quantity takes 4 MB per
        # 128 steps, and a batch that stops early never creates the larger ones.
        sizes = [size for size in _STORED_LADDER if size < S] + [S]
        return _stored_steady_state(net, xs, ys, weights, objective, options, sizes)

    def _checkpointed_batch(self, net, xs, ys, weights, objective, options):
        params, static = eqx.partition(net, eqx.is_inexact_array)

        def total(p):
            m = eqx.combine(p, static)
            losses, info = jax.vmap(lambda x, y: self._steady_state(m, x, y, objective, options))(xs, ys)
            return weighted_sum(weights, losses), dict(info, loss=losses)

        (loss, info), grads = jax.value_and_grad(total, has_aux=True)(params)
        return loss, grads, info

    def _steady_state(self, net, x, y, objective, options):
        r0 = net.init_state(x)
        if self.truncation is None:
            r, info = relax_loop(net, x, r0, options, kind="checkpointed", checkpoints=self.checkpoints)
            return objective.value(net, r, y), info
        r_star, info = relax_loop(jax.lax.stop_gradient(net), x, r0, options)
        r_star = jax.lax.stop_gradient(r_star)
        solver, dt = options.solver, options.dt0
        state = solver_init(solver, net, r_star, x, 0.0, dt)

        def step(carry, j):
            r, s = carry
            return solver_step(solver, net, r, x, j * dt, dt, s, False), None

        (r, _), _ = jax.lax.scan(step, (r_star, state), jnp.arange(self.truncation, dtype=r_star.dtype))
        return objective.value(net, r, y), info

    def _trajectory(self, net, x, y, objective: Trajectory, options):
        dtype = x.dtype
        grid = time_grid(objective.ts, options.dt0, options.max_steps, dtype)
        r0 = net.init_state(x[0])
        if self.truncation is None:
            rs, info = rollout_loop(net, x, grid, r0, options.solver, checkpoints=self.checkpoints)
            return objective.value(net, rs, y), info
        rs_free, info = rollout_loop(jax.lax.stop_gradient(net), x, grid, r0, options.solver)
        rs_free = jax.lax.stop_gradient(rs_free)
        h, T = self.truncation, x.shape[0]
        # Interval k starts from r(ts[k-1]): r0 for k = 0, else the (k-1)-th saved state.
        starts = jnp.concatenate([r0[None], rs_free[:-1]])

        def truncated_state(k):
            first = k - h + 1

            def seg(r, j):
                idx = first + j
                i = jnp.clip(idx, 0, T - 1)
                r_new = integrate_interval(options.solver, net, r, x[i], grid.t0s[i], grid.dts[i], grid.n_sub)
                return tree_where(idx >= 0, r_new, r), None

            r_start = starts[jnp.clip(first, 0, T - 1)]
            r_k, _ = jax.lax.scan(seg, r_start, jnp.arange(h))
            return r_k

        rs = jax.vmap(truncated_state)(jnp.arange(T))
        return objective.value(net, rs, y), info


def _stored_steady_state(net, xs, ys, weights, objective, options, sizes: list[int]):
    """Full BPTT through the relaxations of a batch, differentiating exactly the steps each
    example took, at the cost of a forward solve and one VJP per step.

    Forward: the batch relaxes with fixed solver steps (the semantics of
    `FixedStep()`: stop when the step difference over `dt0` is within tolerance) and stores
    its states, `(S, B, n)`, with each step's linearisation in the state (the residuals
    that vary between steps; those that do not, such as the weights, once). Backward: a
    batch-level while loop runs the adjoint `a_{k} = a_{k+1} dPhi/dr(r_k)` for `max_b K_b`
    steps (example b joins at its own `K_b`), each step the transpose of its stored
    linearisation, with no evaluation of the step; the parameter cotangent of every 8 steps
    is one VJP of those steps at once with the parameters shared, a matrix product over
    `8 x B` rows. Both loops run as many steps as the slowest example took, never
    `max_steps`.

    The buffers grow along `sizes` (stored steps, increasing): when some example has not
    stopped once they are full, they are copied into the next size's and the same loop goes
    on from the step where it was (no step is taken twice). Past the last size `L`, the
    relaxation goes on in segments of `L` steps, each stored over the one before, keeping
    each segment's first state; the backward pass takes the last segment from the buffers
    and relaxes each earlier one again from its first state (every example stopping at its
    own step count, known by then) before reversing it: one more forward sweep of all but
    the last segment, memory `O(L + max_steps / L)` states per example. Each choice is a
    batch-level `lax.cond`. Returns `(loss, grads, info)`.
    """
    params, static = eqx.partition(net, eqx.is_inexact_array)
    frozen = jax.lax.stop_gradient(net)
    solver, dt, max_steps = options.solver, options.dt0, options.max_steps
    B = xs.shape[0]
    R0 = jax.vmap(frozen.init_state)(xs)
    dtype = R0.dtype
    c = _CHUNK
    rows = jnp.arange(c)
    xs_rows = jax.tree.map(lambda a: jnp.tile(a, (c,) + (1,) * (a.ndim - 1)), xs)  # row i * B + b: example b

    def step_batch(m, R, k):
        t = k.astype(dtype) * dt
        return jax.vmap(lambda r, x: _fresh_step(solver, m, r, x, t, dt))(R, xs)

    def tol(R):
        return options.atol + options.rtol * jax.vmap(rms_norm)(R)

    # Stagnation as `nd.iterate` counts it, per example (patience in steps: this loop checks
    # every step).
    from ..relaxation._fixed_step import stopping_rules

    patience, margin = stopping_rules(options.relaxation)

    # Each step's linearisation in the state is kept for the backward pass, so that it
    # does not evaluate the step again: the residuals that change from step to step are
    # stored, those that do not (the weights the products use) are taken once.
    def linearised_step(R, k):
        return jax.linearize(lambda R: step_batch(frozen, R, k), R)

    k0 = jnp.asarray(0)
    varying = _varying_leaves(lambda R, k: jax.tree.leaves(linearised_step(R, k)[1]), R0, k0)
    fixed_leaves, lin_def = jax.tree.flatten(linearised_step(R0, k0)[1])
    stored_leaves = [leaf for leaf, v in zip(fixed_leaves, varying) if v]

    def linearised_leaves(R, k):
        R1, lin = linearised_step(R, k)
        leaves = jax.tree.leaves(lin)
        if [(a.shape, a.dtype) for a in leaves] != [(a.shape, a.dtype) for a in fixed_leaves]:
            raise RuntimeError(  # a step traces alike at every k: not expected to happen
                "nd.BPTT internal error: the relaxation step's linearisation traced differently "
                "at two steps; please report it with the network that does this."
            )
        return R1, [leaf for leaf, v in zip(leaves, varying) if v]

    def advance(state):
        """One step of every live example and its stopping test; with its stored leaves."""
        R, k, done, K, res, progress = state
        R1, leaves = linearised_leaves(R, k)
        res1 = jax.vmap(rms_norm)(R1 - R) / dt
        tol1 = tol(R1)
        live = ~done
        R = jnp.where(live[:, None], R1, R)
        res = jnp.where(live, res1, res)
        K = jnp.where(live, k + 1, K)
        stuck = jnp.zeros_like(done)
        if patience is not None:
            progress = jax.tree.map(
                lambda new, old: jnp.where(live, new, old),
                progress.update(res1, k + 1, tol1, max_steps, patience, margin),
                progress,
            )
            stuck = progress.since >= patience
        done = done | (res1 <= tol1) | ~jnp.isfinite(res1) | stuck
        return (R, k + 1, done, K, res, progress), leaves

    def store(buf, lbuf, R, leaves, i):
        buf = jax.lax.dynamic_update_index_in_dim(buf, R, i, 0)
        lbuf = [jax.lax.dynamic_update_index_in_dim(b, leaf, i, 0) for b, leaf in zip(lbuf, leaves)]
        return buf, lbuf

    def stored_run(end, carry, off=0):
        """Steps until step `end` or every example stopped, step `k` stored at `k - off`."""

        def body(t):
            state, buf, lbuf = t
            state1, leaves = advance(state)
            return (state1, *store(buf, lbuf, state[0], leaves, state[1] - off))

        return jax.lax.while_loop(lambda t: (t[0][1] < end) & ~jnp.all(t[0][2]), body, carry)

    def buffers(S, old=None):
        # The states' buffer is padded to whole chunks for the backward pass's slices (never
        # written past S); `old`'s steps, if given, come first.
        buf = jnp.zeros((-(-S // c) * c,) + R0.shape, dtype)
        lbuf = [jnp.zeros((S,) + leaf.shape, leaf.dtype) for leaf in stored_leaves]
        if old is not None:
            buf, *lbuf = [jax.lax.dynamic_update_slice_in_dim(b, o, 0, 0) for b, o in zip([buf, *lbuf], old)]
        return buf, lbuf

    def start(state):
        """`info`, the loss and its gradient in the parameters and in the final states."""
        R, _, done, K, res, progress = state
        stagnated = progress.since >= patience if patience is not None else jnp.zeros_like(done)
        info = jax.vmap(lambda r, steps, res, stag: relax_info(r, steps, res, options, stag))(R, K, res, stagnated)

        def readout_loss(p, R):
            m = eqx.combine(p, static)
            losses = jax.vmap(lambda r, y: objective.value(m, r, y))(R, ys)
            return weighted_sum(weights, losses), losses

        (loss, losses), (g_readout, A) = jax.value_and_grad(readout_loss, argnums=(0, 1), has_aux=True)(params, R)
        return loss, dict(info, loss=losses), g_readout, A

    def finish(loss, info, g_readout, A0, G):
        # The initial state may depend on the parameters (a learnt r0).
        _, vjp0 = jax.vjp(lambda p: jax.vmap(eqx.combine(p, static).init_state)(xs), params)
        (g0,) = vjp0(A0)
        return loss, jax.tree.map(lambda a, b, c: a + b + c, g_readout, G, g0), info

    def reverse(buf, lbuf, off, top, K, A, G):
        """The adjoint from step `top` down to `off`, the states and linearisations of those
        steps stored from index 0 of `buf`/`lbuf`; `A` the adjoint after step `top`, `G` the
        parameter gradient so far. In chunks of `c` stored steps from the top: within a
        chunk each step is the transpose of its stored linearisation (its adjoint kept);
        then the chunk's parameter gradient is ONE VJP of its `c` steps at once, a matrix
        product over `c x B` rows. Per step, the parameter VJP would read and write every
        weight-sized cotangent (with whatever maps the parameters to the weights the
        products use, e.g. Hopfield's symmetrisation)."""

        def linearisation(i):
            stored = iter([jax.lax.dynamic_index_in_dim(b, i, 0, keepdims=False) for b in lbuf])
            return jax.tree.unflatten(lin_def, [next(stored) if v else leaf for leaf, v in zip(fixed_leaves, varying)])

        def chunk_grads(lo, A_chunk):
            # The chunk's steps as `c x B` rows of one batch, each with its own input and
            # time: no quantity of an example is broadcast over the steps, so the transpose
            # has no sum over a leading steps axis (XLA:CPU runs that sum of a (c, B, n)
            # array 20-30x slower than the same adds as rows: 4.2 ms at B = 128, n = 512).
            R_rows = jax.lax.dynamic_slice_in_dim(buf, lo, c, 0).reshape((c * B,) + R0.shape[1:])
            t_rows = jnp.repeat((off + lo + rows).astype(dtype) * dt, B)

            def total(p):
                m = eqx.combine(p, static)
                steps = jax.vmap(lambda r, x, t: _fresh_step(solver, m, r, x, t, dt))(R_rows, xs_rows, t_rows)
                return jnp.vdot(A_chunk.reshape(steps.shape), steps)

            return jax.grad(total)(params)

        def bbody(s):
            j, A, G = s  # j: the top step of this chunk, an index into the buffers
            lo = (j // c) * c

            def ibody(t):
                i, A, A_chunk = t
                live = (off + i < K)[:, None]
                Ai = jnp.where(live, A, jnp.zeros((), dtype))
                (g_R,) = jax.linear_transpose(linearisation(i), R0)(Ai)
                A_chunk = jax.lax.dynamic_update_index_in_dim(A_chunk, Ai, i - lo, 0)
                return i - 1, jnp.where(live, g_R, A), A_chunk

            A_chunk = jnp.zeros((c,) + A.shape, dtype)  # slots above j stay zero
            _, A, A_chunk = jax.lax.while_loop(lambda t: t[0] >= lo, ibody, (j, A, A_chunk))
            return lo - 1, A, jax.tree.map(jnp.add, G, chunk_grads(lo, A_chunk))

        _, A, G = jax.lax.while_loop(lambda s: s[0] >= 0, bbody, (top - off, A, G))
        return A, G

    zeros = jax.tree.map(jnp.zeros_like, params)

    def backward(carry, fits):
        state, buf, lbuf = carry
        loss, info, g_readout, A = start(state)
        # Where the states do not fit this result is discarded: no backward steps.
        top = jnp.where(fits, state[1] - 1, -1)
        A0, G = reverse(buf, lbuf, 0, top, state[3], A, zeros)
        return finish(loss, info, g_readout, A0, G)

    def segmented(carry):
        """Past the last size `L`: the relaxation goes on in segments of `L` steps, each
        stored over the one before and its first state kept. The backward pass takes the
        last segment from the buffers, then relaxes each earlier one again into them, from
        its first state, before reversing it."""
        state, buf, lbuf = carry
        L = sizes[-1]
        firsts = jnp.zeros((-(-max_steps // L),) + R0.shape, dtype).at[0].set(R0)

        def segment(t):
            state, firsts, buf, lbuf = t
            off = state[1]
            firsts = jax.lax.dynamic_update_index_in_dim(firsts, state[0], off // L, 0)
            state, buf, lbuf = stored_run(jnp.minimum(off + L, max_steps), (state, buf, lbuf), off)
            return state, firsts, buf, lbuf

        state, firsts, buf, lbuf = jax.lax.while_loop(
            lambda t: (t[0][1] < max_steps) & ~jnp.all(t[0][2]), segment, (state, firsts, buf, lbuf)
        )
        loss, info, g_readout, A = start(state)
        k_max, K = state[1], state[3]
        last = (k_max - 1) // L

        def back_segment(t):
            j, A, G, buf, lbuf = t  # j: the segment
            off = j * L
            top = jnp.minimum(off + L, k_max)

            def again(u):
                k, R, buf, lbuf = u
                R1, leaves = linearised_leaves(R, k)
                buf, lbuf = store(buf, lbuf, R, leaves, k - off)
                return k + 1, jnp.where((k < K)[:, None], R1, R), buf, lbuf

            # The last segment is still in the buffers (with, past its end, the steps of
            # the one before, which the backward pass does not read).
            begin = jnp.where(j == last, top, off)
            first = jax.lax.dynamic_index_in_dim(firsts, j, 0, keepdims=False)
            _, _, buf, lbuf = jax.lax.while_loop(lambda t: t[0] < top, again, (begin, first, buf, lbuf))
            A, G = reverse(buf, lbuf, off, top - 1, K, A, G)
            return j - 1, A, G, buf, lbuf

        _, A0, G, _, _ = jax.lax.while_loop(lambda t: t[0] >= 0, back_segment, (last, A, zeros, buf, lbuf))
        return finish(loss, info, g_readout, A0, G)

    def attempt(i, carry):
        S = sizes[i]
        if carry is None:
            big = jnp.full((B,), jnp.finfo(dtype).max, dtype)
            zero = jnp.zeros((B,), int)
            carry = ((R0, k0, jnp.zeros((B,), bool), zero, big, Progress.start((B,), dtype)), *buffers(S))
        else:
            state, buf, lbuf = carry
            carry = (state, *buffers(S, [buf, *lbuf]))
        carry = stored_run(S, carry)
        if S >= max_steps:  # every step the budget allows is stored
            return backward(carry, jnp.asarray(True))
        # Every example stopped within S steps: the states fit. The backward pass runs
        # outside the cond (taking no steps when they do not fit), where XLA shares the
        # forward pass's loop-invariant products with it; inside a branch it ran 1.3x slower.
        fits = jnp.all(carry[0][2])
        out = backward(carry, fits)
        more = functools.partial(attempt, i + 1, carry) if i + 1 < len(sizes) else functools.partial(segmented, carry)
        return jax.lax.cond(fits, lambda: out, more)

    return attempt(0, None)


# The buffer sizes of `_stored_steady_state`, in stored steps, below `BPTT.stored_steps`.
_STORED_LADDER = (8, 32, 128, 512, 2048)
_CHUNK = 8  # stored steps per parameter VJP in the backward pass of `_stored_steady_state`


def _varying_leaves(fn, *args) -> list[bool]:
    """For each output leaf of `fn(*args)`, whether it depends on `args` (a walk of the
    traced program's data flow); the others depend only on what `fn` closes over."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    # By identity: a literal operand (a constant) is never among them.
    live = {id(v) for v in jaxpr.invars}
    for eqn in jaxpr.eqns:
        if any(id(v) in live for v in eqn.invars):
            live.update(id(v) for v in eqn.outvars)
    return [id(v) in live for v in jaxpr.outvars]


def _fresh_step(solver, net, r, x, t0, dt):
    # One solver step from a freshly initialised solver state: for FSAL solvers the carried
    # first stage is recomputed, so the step is a function of `r` alone and the adjoints
    # below are exact.
    state = solver_init(solver, net, r, x, t0, dt)
    return solver_step(solver, net, r, x, t0, dt, state, True)[0]


def _two_phase_trajectory(net, xs, ys, weights, objective, options):
    """Full BPTT of a batch of trajectories in two phases, the fast path of `BPTT()`.

    Reverse mode through a scan accumulates the parameter gradient at every step: a
    `(n, n)` weight cotangent read and written per step, which dominates the cost. Here the
    parameters are held constant and a zero probe `e_i` is added to every step's output: the
    gradient with respect to the probes is the adjoint `a_i = dl/dr_i` at every step (one
    reverse sweep over the state only). The parameter gradient is then one VJP of all steps
    at once, `sum_i a_i^T d step(r_{i-1})/dw` (the surrogate), which XLA runs as large
    matrix products over every step of every example.

    The batch is carried inside the scans (`(B, n)` states, each step vmapped over the
    rows) rather than vmapping a one-example scan: the stored states and adjoints stay
    `(T, n_sub, B, n)`, with no transposes between the phases (measured 1.4x faster on the
    CPU for the solve and 1.7x for the surrogate). The result equals reverse mode through
    the loop (tests check it to rounding). Returns `(loss, grads, info)`.
    """
    frozen = jax.lax.stop_gradient(net)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    grid = time_grid(objective.ts, options.dt0, options.max_steps, xs.dtype)
    solver, n_sub = options.solver, grid.n_sub
    R0 = jax.vmap(lambda x: frozen.init_state(x[0]))(xs)
    sub_t = jnp.arange(n_sub, dtype=R0.dtype)
    xs_t = jnp.swapaxes(xs, 0, 1)  # (T, B, n_in): the scans run over time

    def step_rows(m, R, X, t, dt):
        return jax.vmap(lambda r, x: _fresh_step(solver, m, r, x, t, dt))(R, X)

    def run(probes):
        def interval(R, inp):
            X, t0, dt, e_k = inp

            def sub(R, inp):
                j, e = inp
                # The stored states carry no cotangent: no zero array for them in reverse.
                return step_rows(frozen, R, X, t0 + j * dt, dt) + e, jax.lax.stop_gradient(R)

            R1, R_pre = jax.lax.scan(sub, R, (sub_t, e_k))
            return R1, (R_pre, R1)

        _, (R_pre, R_end) = jax.lax.scan(interval, R0, (xs_t, grid.t0s, grid.dts, probes))
        return R_pre, R_end

    T = xs.shape[1]
    probes = jnp.zeros((T, n_sub) + R0.shape, R0.dtype)
    (R_pre, R_end), run_vjp = jax.vjp(run, probes)

    def readout_total(m, R_end):
        losses = jax.vmap(lambda rs, y: objective.value(m, rs, y), in_axes=(1, 0))(R_end, ys)
        return weighted_sum(weights, losses), losses

    (loss, losses), g_states = jax.value_and_grad(readout_total, argnums=1, has_aux=True)(frozen, R_end)
    (adjoints,) = run_vjp((jnp.zeros_like(R_pre), g_states))
    R_pre, adjoints = jax.lax.stop_gradient((R_pre, adjoints))

    def surrogate(p):
        m = eqx.combine(p, static)

        def interval(R_k, A_k, X, t0, dt):  # (n_sub, B, n) each
            def sub(R, A, j):
                return jnp.vdot(A, step_rows(m, R, X, t0 + j * dt, dt))

            return jnp.sum(jax.vmap(sub)(R_k, A_k, sub_t))

        dynamics = jnp.sum(jax.vmap(interval)(R_pre, adjoints, xs_t, grid.t0s, grid.dts))
        return readout_total(m, jax.lax.stop_gradient(R_end))[0] + dynamics

    grads = jax.grad(surrogate)(params)
    finite = jax.vmap(all_finite, in_axes=1)(R_end)
    B = xs.shape[0]
    info = dict(
        result=jax.vmap(lambda ok: RESULTS.where(ok, RESULTS.successful, RESULTS.nonfinite))(finite),
        converged=finite,
        steps=jnp.full((B,), n_sub * T),
        loss=losses,
    )
    return loss, grads, info
