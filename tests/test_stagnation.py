"""A relaxation whose residual stops falling (an oscillation, or a rounding floor above the
tolerance, as TF32 matmuls give on a GPU) stops after a bounded number of steps with its own
outcome, `RESULTS.stagnated`, never running to `max_steps`."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from neurodyn.networks import AbstractNetwork


class _FloorNetwork(AbstractNetwork):
    """A contracting CTRNN plus a deterministic "rounding noise" of size `floor` that no
    relaxation can get below: `F(r) = -r + tanh(W r + U x) + floor sin(1e6 r)`."""

    net: nd.networks.CTRNN
    floor: float = eqx.field(static=True)

    @property
    def n_state(self):
        return self.net.n_state

    @property
    def n_in(self):
        return self.net.n_in

    @property
    def n_out(self):
        return self.net.n_out

    def __call__(self, t, r, x):
        return self.net(t, r, x) + self.floor * jnp.sin(1e6 * r)

    def init_state(self, x):
        return self.net.init_state(x)

    def readout(self, r):
        return self.net.readout(r)


def _ctrnn(key, gain=0.5):
    return nd.networks.CTRNN(8, 3, 2, nd.activations.tanh, gain=gain, key=key)


def _is(result, member):
    return bool(result == member)


def test_a_rounding_floor_above_the_tolerance_stops_as_stagnated(getkey):
    net = _FloorNetwork(_ctrnn(getkey()), 1e-4)
    x = jr.normal(getkey(), (3,))
    r, info = nd.relax(net, x)  # float64 defaults: rtol 1e-10 lies far below the floor
    assert not bool(info["converged"])
    assert _is(info["result"], nd.RESULTS.stagnated)
    assert int(info["steps"]) < 1000  # patience 100 checks of 2 steps, not max_steps = 10 000
    # The same network without the floor converges: the stop is the floor's doing.
    _, info0 = nd.relax(net.net, x)
    assert bool(info0["converged"])


def test_an_oscillating_relaxation_stops_as_stagnated(getkey):
    # W = 0: F = -r + c, and Euler with dt0 = 2 maps r to 2c - r: a period-2 oscillation
    # whose residual never falls.
    net = _ctrnn(getkey())
    net = eqx.tree_at(lambda m: m.W, net, jnp.zeros_like(net.W))
    x = jr.normal(getkey(), (3,))
    _, info = nd.relax(net, x, solver=diffrax.Euler(), dt0=2.0)
    assert _is(info["result"], nd.RESULTS.stagnated) and not bool(info["converged"])
    assert int(info["steps"]) <= 2 * 101
    # patience=None keeps the old behaviour: the loop runs to max_steps.
    _, info_none = nd.relax(net, x, dt0=2.0, max_steps=500, relaxation=nd.relaxation.FixedStep(patience=None))
    assert _is(info_none["result"], nd.RESULTS.max_steps_reached) and int(info_none["steps"]) == 500


@pytest.mark.slow
def test_stagnation_reaches_the_estimators_info(getkey):
    """Each estimator reports the stalled forward relaxation per example in the batch."""
    net = _FloorNetwork(_ctrnn(getkey()), 1e-4)
    xs, ys = jr.normal(getkey(), (2, 3)), jr.normal(getkey(), (2, 2))
    for est in (nd.RBP(), nd.EP(0.01), nd.BPTT(), nd.BPTT(stored_steps=1000)):
        _, _, info = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=est)
        assert not bool(jnp.any(info["converged"])), type(est).__name__
        assert bool(jnp.all(jax.vmap(lambda r: r == nd.RESULTS.stagnated)(info["result"]))), type(est).__name__
        assert int(jnp.max(info["steps"])) < 1000


class _FlatFloorNetwork(_FloorNetwork):
    """The rounding floor as a constant of the dynamics' Jacobian (as real rounding is)."""

    def __call__(self, t, r, x):
        return self.net(t, r, x) + self.floor * jax.lax.stop_gradient(jnp.sin(1e6 * r))


def test_rtrls_joint_loop_reports_like_a_relaxation(getkey):
    """RTRL's steady state relaxes r and p = dr/dw together on `nd.iterate`: the same
    outcomes as `nd.relax` for a budget, a non-finite state and a rounding floor."""
    net, x, y = _ctrnn(getkey()), jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    est, obj = nd.RTRL(), nd.SteadyState()
    _, _, ok = nd.value_and_grad(net, x, y, objective=obj, estimator=est)
    assert _is(ok["result"], nd.RESULTS.successful) and bool(ok["converged"])
    _, _, short = nd.value_and_grad(net, x, y, objective=obj, estimator=est, max_steps=3)
    assert _is(short["result"], nd.RESULTS.max_steps_reached) and int(short["steps"]) == 3
    _, _, bad = nd.value_and_grad(net, x.at[0].set(jnp.nan), y, objective=obj, estimator=est)
    assert _is(bad["result"], nd.RESULTS.nonfinite) and not bool(bad["converged"])
    # (The floor's own derivative, 1e2 cos(1e6 r), would make p diverge: it is kept out of J.)
    _, _, floor = nd.value_and_grad(_FlatFloorNetwork(net, 1e-4), x, y, objective=obj, estimator=est)
    assert _is(floor["result"], nd.RESULTS.stagnated) and int(floor["steps"]) < 1000


def test_the_default_tolerances_sit_above_the_matmul_rounding(getkey, monkeypatch):
    # On a GPU float32 products run in TF32 (unit roundoff 2^-11) unless the precision is
    # raised; the float32 default rtol = 1e-5 sat below that floor, so every relaxation ran
    # into its stagnation test. The defaults are floored at 8x the products' roundoff: a field
    # with a rounding floor of TF32's size stagnates under the CPU's defaults and converges
    # under the GPU's, with nothing set by the user.
    from neurodyn.adjoint._common import default_rtol

    net = _FloorNetwork(_ctrnn(getkey()), 2.0**-11)
    net = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net)
    x = jr.normal(getkey(), (3,)).astype(jnp.float32)
    assert nd.SteadyState().options(jnp.float32).rtol == 1e-5  # the CPU: float32 products
    _, info_cpu = nd.relax(net, x)
    assert _is(info_cpu["result"], nd.RESULTS.stagnated)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    opts = nd.SteadyState().options(jnp.float32)
    assert (opts.rtol, opts.atol) == (8 * 2.0**-11, 0.8 * 2.0**-11)
    assert default_rtol(jnp.float32) == 8 * 2.0**-11
    _, info_gpu = nd.relax(net, x)
    assert bool(info_gpu["converged"]) and int(info_gpu["steps"]) < 50
    # What raises the precision, or asks for a tolerance, keeps it; float64 is untouched.
    with jax.default_matmul_precision("highest"):
        assert nd.SteadyState().options(jnp.float32).rtol == 1e-5
    assert nd.SteadyState().options(jnp.float32, rtol=1e-6).rtol == 1e-6
    assert nd.SteadyState().options(jnp.float64).rtol == 1e-10
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")  # one bfloat16 pass by default
    assert nd.SteadyState().options(jnp.float32).rtol == 8 * 2.0**-8


class _Power(AbstractNetwork):
    """`F(r) = -a (r - x)^p`: for `p = 1` a linear contraction at the rate `1 - a dt0` per
    step, for `p = 3` an equilibrium that is barely stable (`J = 0` there), which Euler
    approaches like `k^(-1/2)`, its residual like `k^(-3/2)`: falling by far more than 1% per
    check forever, and never near a float64 tolerance within any budget."""

    a: jax.Array
    p: int = eqx.field(static=True)

    @property
    def n_state(self):
        return self.a.shape[0]

    @property
    def n_in(self):
        return self.a.shape[0]

    @property
    def n_out(self):
        return self.a.shape[0]

    def __call__(self, t, r, x):
        return -self.a * (r - x) ** self.p

    def init_state(self, x):
        return jnp.zeros_like(x)

    def readout(self, r):
        return r


def test_a_relaxation_too_slow_for_its_budget_stops_early():
    """A residual that keeps falling, but too slowly to reach the tolerance within
    `max_steps` at its rate, stops as stagnated at a power-of-two check instead of running
    the whole budget; without the test (`budget_margin=None`) it runs to `max_steps`."""
    net, x = _Power(jnp.ones(2), 3), jnp.array([0.5, -0.4])
    _, info = nd.relax(net, x, relaxation=nd.relaxation.FixedStep())
    assert _is(info["result"], nd.RESULTS.stagnated) and not bool(info["converged"])
    steps = int(info["steps"])
    assert steps in (128, 256, 512, 1024, 2048, 4096) and steps <= 4096, steps
    # It was still falling by more than 1% per `patience` (100) checks: the patience test
    # alone would not have stopped it.
    free = nd.relaxation.FixedStep(patience=None)
    _, at_stop = nd.relax(net, x, relaxation=free, max_steps=steps)
    _, later = nd.relax(net, x, relaxation=free, max_steps=steps + 100)
    assert float(later["residual"]) < 0.99 * float(at_stop["residual"])
    _, whole = nd.relax(net, x, relaxation=nd.relaxation.FixedStep(budget_margin=None))
    assert _is(whole["result"], nd.RESULTS.max_steps_reached) and int(whole["steps"]) == 10_000
    with pytest.raises(ValueError, match="budget_margin > 0"):
        nd.relaxation.FixedStep(budget_margin=0.0)


@pytest.mark.parametrize("a, max_steps", [(0.0019, 10_000), (0.0019, 9_000), (0.004, 10_000)])
def test_a_slow_contraction_that_fits_its_budget_still_converges(a, max_steps):
    # Euler on F = -a (r - x): the residual a |x| (1 - a)^k reaches the float64 tolerance
    # (rtol 1e-10 of |r| ~ |x|) after k = log(rtol / a) / log(1 - a) steps, 8 805 for
    # a = 0.0019 (98% of a 9 000-step budget) and 4 371 for a = 0.004.
    net, x = _Power(jnp.full(2, a), 1), jnp.array([1.0, -1.0])
    opts = nd.SteadyState().options(jnp.float64)
    _, info = nd.relax(net, x, max_steps=max_steps, relaxation=nd.relaxation.FixedStep())
    assert bool(info["converged"]), info["result"]
    k = jnp.log((opts.atol + opts.rtol) / a) / jnp.log1p(-a)
    assert abs(int(info["steps"]) - float(k)) <= 2


def test_bptt_stops_a_slow_relaxation_where_nd_relax_does():
    """BPTT's stored-states relaxation counts progress per example as `nd.relax` with
    `FixedStep()` does: the same steps and outcomes for a batch of a crawling example (stopped
    before its budget) and one that converges at once (it starts at its equilibrium)."""
    net = _Power(jnp.ones(2), 3)
    xs, ys = jnp.array([[0.5, -0.4], [0.0, 0.0]]), jnp.zeros((2, 2))
    _, _, info = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=nd.BPTT(), max_steps=1000)
    assert int(info["steps"][0]) < 1000 and int(info["result"]._value[0]) == nd.RESULTS.stagnated._value
    assert bool(info["converged"][1])
    for x, steps, result in zip(xs, info["steps"], info["result"]._value):
        _, alone = nd.relax(net, x, relaxation=nd.relaxation.FixedStep(), max_steps=1000)
        assert int(steps) == int(alone["steps"])
        assert int(result) == int(alone["result"]._value)


def test_an_adjoint_solve_that_cannot_finish_stops_early():
    """`AdjointODE` has the relaxation's stopping rules: an adjoint iteration that diverges
    too slowly to overflow (an unstable linearisation, as at a state that is not an
    equilibrium) ends well before `max_steps`, not converged; without the rules it ran them
    all. A contraction that fits its budget still converges."""
    g = jnp.array([1.0, -2.0, 0.5])

    def solve(rate, **kw):
        # J^T = rate * I: the adjoint steps v <- v + (rate v + g) grow (rate > 0) or contract.
        return nd.adjoint.AdjointODE(**kw).solve(lambda v: rate * v, g, None, False, 1.0)

    grows = solve(0.003)
    assert not bool(grows.converged) and int(grows.steps) < 1_000
    assert int(solve(0.003, patience=None, budget_margin=None).steps) == 10_000
    # Converges at step 5 730: rate 0.997, tolerance 1e-10 (|g| + |v|) with |v| -> 333 |g|.
    slow = solve(-0.003)
    assert bool(slow.converged) and abs(int(slow.steps) - 5_730) <= 2
    np.testing.assert_allclose(slow.value, g / 0.003, rtol=1e-7)
    with pytest.raises(ValueError, match="budget_margin > 0"):
        nd.adjoint.AdjointODE(budget_margin=-1.0)
