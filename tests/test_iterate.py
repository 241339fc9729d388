"""One loop under every iterative solve (`nd.iterate`): every relaxation and the iterative
adjoint solve report max steps, non-finite values and stagnation the same way, and a
user-written relaxation or adjoint solve plugs in through the public API only."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import neurodyn as nd


class _Map(nd.AbstractIterativeSolver):
    """`y <- a y + c`: contracts for |a| < 1, oscillates for a = -1, diverges for |a| > 1;
    `noise` adds a floor the residual cannot fall below."""

    a: float
    noise: float = 0.0

    def init(self, y0, args):
        return None

    def step(self, y, state, args, iteration):
        c = args
        y1 = self.a * y + c + self.noise * jnp.sin(1e6 * y)
        return y1, state, jnp.sqrt(jnp.mean((y1 - y) ** 2))

    def tolerance(self, y, args):
        return jnp.asarray(1e-12)


@pytest.mark.parametrize(
    "a,noise,patience,max_iterations,expected,at_most",
    [
        (0.5, 0.0, None, 500, "successful", 60),
        (0.5, 0.0, None, 10, "max_steps_reached", 10),
        (1e3, 0.0, None, 500, "nonfinite", 200),
        (-1.0, 0.0, 20, 10_000, "stagnated", 25),
        (0.5, 1e-3, 20, 10_000, "stagnated", 500),  # noise sets new minima now and then
        (-1.0, 0.0, None, 300, "max_steps_reached", 300),
    ],
    ids=["converges", "budget", "diverges", "oscillates", "floor", "no-patience"],
)
def test_iterate_reports_each_outcome(a, noise, patience, max_iterations, expected, at_most):
    y0, c = jnp.ones(3), jnp.full((3,), 0.3)
    sol = nd.iterate(_Map(a, noise), y0, c, max_iterations=max_iterations, patience=patience)
    assert sol.result == getattr(nd.RESULTS, expected)
    assert int(sol.iterations) <= at_most
    assert bool(sol.converged) == (expected == "successful")


@pytest.mark.parametrize(
    "a, expected, at_most",
    [
        (0.9965, "successful", 7_600),  # converges at iteration 7 538 of 10 000: not stopped
        (0.999, "stagnated", 4_096),  # would need 26 400: stopped at a power of two
        (1.03, "stagnated", 256),  # 10x its best by 78, yet only ~1e128 by 10 000, no overflow
        (1.5, "nonfinite", 1_800),  # overflows (float64) at ~1 750: still reported as such
    ],
    ids=["slow-fits", "too-slow", "slow-divergence", "fast-divergence"],
)
def test_the_budget_test_ends_what_cannot_finish_in_time(a, expected, at_most):
    """With `budget_margin`, a loop that falls too slowly to reach its tolerance, or grows
    too slowly to overflow, within `max_iterations` ends as stagnated at a power-of-two
    iteration; one that would converge or overflow in time is left to. (Float64, the
    tolerance 1e-12: the residual of `y <- a y + c` from 1 goes like `0.3 a^k`.)"""
    y0, c = jnp.ones(3), jnp.full((3,), 0.3)
    sol = nd.iterate(_Map(a), y0, c, max_iterations=10_000, patience=100, budget_margin=2.0)
    assert sol.result == getattr(nd.RESULTS, expected)
    assert int(sol.iterations) <= at_most
    if expected == "stagnated":
        assert int(sol.iterations) in (64, 128, 256, 512, 1024, 2048, 4096)
        plain = nd.iterate(_Map(a), y0, c, max_iterations=10_000, patience=100)
        assert int(plain.iterations) == 10_000 and plain.result == nd.RESULTS.max_steps_reached


class _Orbit(nd.AbstractIterativeSolver):
    """`y <- R y`, a rotation by 2 pi / 50, its residual the distance to a point `p` of the
    orbit's circle that the iterates pass within `miss` of once per period: a bounded
    oscillation, far above its best (`miss`) most of the time, never growing."""

    miss: float

    def init(self, y0, args):
        return None

    def step(self, y, state, args, iteration):
        c, s = jnp.cos(2 * jnp.pi / 50), jnp.sin(2 * jnp.pi / 50)
        y1 = jnp.stack([c * y[0] - s * y[1], s * y[0] + c * y[1]])
        return y1, state, jnp.linalg.norm(y1 - jnp.array([1.0, 0.0]))

    def tolerance(self, y, args):
        return jnp.asarray(1e-12)


def test_a_bounded_oscillation_far_above_its_best_stops_at_a_power_of_two():
    """An orbit that passes near its target once per period and is 10x or more above that
    best the rest of the time: the patience test counts only the checks near the best
    (one per period, so 100 periods), the budget test ends it at the first power-of-two
    check that finds it far above its best and not growing towards overflow."""
    miss = 1e-3
    # The iterates pass `p` at iteration 5 of each period, `miss` radians off.
    angle = -5 * 2 * jnp.pi / 50 + miss
    y0 = jnp.array([jnp.cos(angle), jnp.sin(angle)])
    ruled = nd.iterate(_Orbit(miss), y0, None, max_iterations=10_000, patience=100, budget_margin=2.0)
    assert ruled.result == nd.RESULTS.stagnated
    assert int(ruled.iterations) in (64, 128, 256)
    patient = nd.iterate(_Orbit(miss), y0, None, max_iterations=10_000, patience=100)
    assert patient.result == nd.RESULTS.stagnated
    # One check near the best per period: patience runs out after about 100 periods.
    assert 100 * 50 - 50 <= int(patient.iterations) <= 100 * 50 + 50


def _net(key, gain=0.5):
    return nd.networks.CTRNN(8, 3, 2, nd.activations.tanh, gain=gain, key=key)


@pytest.mark.parametrize(
    "relaxation",
    [
        nd.relaxation.FixedStep(),
        nd.relaxation.FixedStep(check_every=2),
        nd.relaxation.Anderson(),
        nd.relaxation.NewtonKrylov(),
    ],
    ids=["fixed", "fixed-2", "anderson", "newton-krylov"],
)
def test_every_relaxation_reports_budget_and_divergence_alike(relaxation, getkey):
    net, x = _net(getkey()), jr.normal(getkey(), (3,))
    _, ok = nd.relax(net, x, relaxation=relaxation)
    assert bool(ok["converged"]) and ok["result"] == nd.RESULTS.successful
    _, short = nd.relax(net, x, relaxation=relaxation, max_steps=1)
    assert not bool(short["converged"]) and short["result"] == nd.RESULTS.max_steps_reached
    assert int(short["steps"]) == 1
    # A non-finite state, whatever the strategy: a NaN input.
    _, bad = nd.relax(net, x.at[0].set(jnp.nan), relaxation=relaxation)
    assert not bool(bad["converged"]) and bad["result"] == nd.RESULTS.nonfinite


def test_fixed_steps_beyond_the_stability_limit_are_reported_as_divergence(getkey):
    # (Anderson and Newton-Krylov solve this linear system: only the plain steps diverge.)
    wild = nd.networks.CTRNN(8, 3, 2, nd.activations.identity, gain=0.1, key=getkey())
    _, bad = nd.relax(wild, jnp.ones(3), solver=diffrax.Euler(), dt0=3.0, max_steps=5000)
    assert not bool(bad["converged"]) and bad["result"] == nd.RESULTS.nonfinite


def test_the_adjoint_ode_reports_its_budget_through_rbp(getkey):
    net, x, y = _net(getkey()), jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, _, info = nd.value_and_grad(
        net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(adjoint=nd.adjoint.AdjointODE(max_steps=2))
    )
    assert not bool(info["converged"]) and int(info["adjoint_steps"]) == 2
    assert info["result"] == nd.RESULTS.adjoint_max_steps_reached


class UserRelaxation(nd.relaxation.AbstractRelaxation):
    """A user's relaxation written against the public API only: damped fixed-point
    iteration `r <- (1 - w) r + w Phi(r)` on the solver's step map, driven by nd.iterate."""

    weight: float = 0.7

    def relax(self, term, args, r0, opts, *, kind, checkpoints):
        solver, dt = opts.solver, opts.dt0
        state = solver.init(term, 0.0, dt, r0, args)
        weight = self.weight

        class Damped(nd.AbstractIterativeSolver):
            def init(self, y0, args):
                return None

            def step(self, r, s, args, iteration):
                phi, _, _, _, _ = solver.step(term, 0.0, dt, r, args, state, True)
                r1 = (1 - weight) * r + weight * phi
                return r1, s, jnp.sqrt(jnp.mean((r1 - r) ** 2)) / (weight * dt)

            def tolerance(self, r, args):
                return opts.atol + opts.rtol * jnp.sqrt(jnp.mean(r**2))

        sol = nd.iterate(Damped(), r0, args, max_iterations=opts.max_steps, kind=kind, checkpoints=checkpoints)
        return nd.relaxation.RelaxationSolution.from_iterate(sol)


class UserAdjoint(nd.adjoint.AbstractAdjointSolve):
    """A user's adjoint solve: the dense Jacobian, solved by numpy-style LU (small n)."""

    def solve(self, matvec, g, jacobian, symmetric, dt):
        del matvec, symmetric, dt
        v = jnp.linalg.solve(jacobian().T, -g)
        return nd.adjoint.AdjointSolution(v, jnp.asarray(True), jnp.asarray(1), jnp.asarray(0.0, g.dtype))


def test_user_written_relaxation_and_adjoint_through_the_public_api(getkey):
    net, x, y = _net(getkey()), jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    r_user, info = nd.relax(net, x, relaxation=UserRelaxation())
    r_ref, _ = nd.relax(net, x)
    assert bool(info["converged"])
    assert float(jnp.max(jnp.abs(r_user - r_ref))) < 1e-9
    _, g_user, info = nd.value_and_grad(
        net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(adjoint=UserAdjoint()), relaxation=UserRelaxation()
    )
    _, g_ref, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP())
    assert bool(info["converged"])
    leaves = zip(jax.tree.leaves(eqx.filter(g_user, eqx.is_inexact_array)), jax.tree.leaves(g_ref))
    assert all(float(jnp.max(jnp.abs(a - b))) < 1e-8 for a, b in leaves)
