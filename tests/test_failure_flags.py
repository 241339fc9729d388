"""Failure is reported, never success: every solve of every estimator that fails alone flips
`info["converged"]` and names its reason in `info["result"]`, and a non-finite loss or gradient
is never a success (issue 11, items 3 and 9). Each test here was checked to fail under the
one-line change named in its docstring."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import neurodyn as nd
from helpers import dense_ift_grad, rel_error


SS = nd.SteadyState()
CE = nd.SteadyState(nd.losses.softmax_cross_entropy)
R = nd.RESULTS


def _vg(net, x, y, est, objective=SS, **options):
    return nd.value_and_grad(net, x, y, objective=objective, estimator=est, **options)


def _codes(*results):
    """The integer codes of a batched result, or of a list of members (to compare batches)."""
    if len(results) == 1:
        return np.atleast_1d(np.asarray(results[0]._value))
    return np.array([int(np.asarray(r._value)) for r in results])


@pytest.fixture(scope="module")
def ctrnn():
    k = jr.split(jr.PRNGKey(11), 3)
    net = nd.networks.CTRNN(6, 3, 2, key=k[0])
    return net, jr.normal(k[1], (3,)), jr.normal(k[2], (2,))


@pytest.fixture(scope="module")
def hop():
    k = jr.split(jr.PRNGKey(40), 3)
    net = nd.networks.Hopfield(4, 8, 3, key=k[0])
    return net, jr.uniform(k[1], (4,)), jr.uniform(k[2], (3,))


# ---------------------------------------------------------------------------------------
# A. Non-finite is never success
# ---------------------------------------------------------------------------------------


def test_class_index_out_of_range_is_refused_when_concrete(ctrnn):
    net, x, _ = ctrnn
    for bad in (2, 7, -1):
        with pytest.raises(ValueError, match=rf"class index {bad}, outside \[0, 2\).*n_out=2"):
            _vg(net, x, jnp.array(bad), nd.BPTT(), CE)
    obj = nd.Trajectory(nd.losses.softmax_cross_entropy, ts=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"class index -1, outside \[0, 2\)"):
        _vg(net, jnp.ones((2, 3)), jnp.array([0, -1]), nd.BPTT(), obj)


def test_class_index_out_of_range_is_flagged_under_jit(ctrnn):
    """Inside jit the index is traced: the loss is NaN (no wrap of -1 to the last class), and
    `flag_nonfinite` reports it. Catches: `flag_nonfinite` not applied in value_and_grad,
    or `softmax_cross_entropy` going back to `-jnp.take(logp, y)`."""
    net, x, _ = ctrnn

    @jax.jit
    @jax.vmap
    def run(y):
        return _vg(net, x, y, nd.BPTT(), CE)

    loss, grads, info = run(jnp.array([0, 1, 2, -1]))
    np.testing.assert_array_equal(np.asarray(info["converged"]), [True, True, False, False])
    assert np.all(np.isfinite(loss[:2])) and np.all(np.isnan(loss[2:]))
    np.testing.assert_array_equal(
        _codes(info["result"]), _codes(R.successful, R.successful, R.nonfinite_gradient, R.nonfinite_gradient)
    )
    # The loss itself: NaN out of range, never the last class's loss for -1.
    logits = jnp.array([0.3, -1.2])
    assert np.isnan(nd.losses.softmax_cross_entropy(logits, jnp.array(-1)))
    assert np.isnan(nd.losses.softmax_cross_entropy(logits, jnp.array(2)))
    assert np.isfinite(nd.losses.softmax_cross_entropy(logits, jnp.array(1)))


@pytest.mark.parametrize("est", [nd.BPTT(), nd.RTRL()], ids=["bptt", "rtrl"])
def test_nan_in_readout_weight_or_target_is_not_success(ctrnn, est):
    """The dynamics never see the readout weight `V` or the target, so every solve
    converges; the NaN shows only in the loss and gradients. Catches: `flag_nonfinite`
    removed from value_and_grad (the info then says converged with NaN gradients)."""
    net, x, y = ctrnn
    bad_net = eqx.tree_at(lambda n: n.V, net, net.V.at[0, 0].set(jnp.nan))
    for n, t in ((net, y), (bad_net, y), (net, y.at[1].set(jnp.nan))):
        loss, grads, info = _vg(n, x, t, est)
        finite = bool(jnp.isfinite(loss))
        assert bool(info["converged"]) == finite
        assert info["result"] == (R.successful if finite else R.nonfinite_gradient)
    assert not finite


@pytest.mark.parametrize("est", [nd.RBP(), nd.EP(0.01)], ids=["rbp", "ep"])
def test_nan_target_is_not_success_for_steady_state_estimators(ctrnn, hop, est):
    net, x, y = hop if isinstance(est, nd.EP) else ctrnn
    loss, _, info = _vg(net, x, y.at[0].set(jnp.nan), est)
    assert not bool(info["converged"]) and not bool(jnp.isfinite(loss))
    # The target's NaN makes the adjoint (RBP) or the nudged phases (EP) NaN too: the
    # result names the cause, not 'unstable equilibrium' or 'the dynamics diverged'.
    assert bool(info["forward_converged"])
    assert info["result"] == R.nonfinite_gradient


def test_complex_data_is_refused(ctrnn):
    net, x, y = ctrnn
    with pytest.raises(ValueError, match=r"x is complex \(complex128\).*imaginary part"):
        _vg(net, np.asarray(x) + 0.5j, y, nd.BPTT())
    with pytest.raises(ValueError, match=r"y is complex \(complex128\).*imaginary part"):
        _vg(net, x, np.asarray(y) + 0.5j, nd.BPTT())
    with pytest.raises(ValueError, match=r"xs is complex"):
        nd.rollout(net, np.ones((2, 3)) * 1j, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"x is complex"):
        nd.relax(net, x.astype(jnp.complex128))


def test_swept_ep_beta_is_checked_as_data(hop):
    """`__check_init__` cannot see a traced beta (a sweep): `info` flags it. Catches: the
    `flag_failure(info, beta > 0 ...)` line of EP removed (beta = 0 then reports converged
    with NaN gradients, and beta = -0.05 a finite, wrong-signed 'success')."""
    net, x, y = hop

    @jax.jit
    @jax.vmap
    def run(beta):
        est = nd.sweeps.with_values(nd.EP(), {"beta": beta})
        return _vg(net, x, y, est)

    _, _, info = run(jnp.array([0.05, 0.0, -0.05, jnp.nan]))
    np.testing.assert_array_equal(np.asarray(info["converged"]), [True, False, False, False])
    np.testing.assert_array_equal(
        _codes(info["result"]), _codes(R.successful, R.invalid_parameter, R.invalid_parameter, R.invalid_parameter)
    )


# ---------------------------------------------------------------------------------------
# B. Every solve that fails alone is reported
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "adjoint",
    [
        nd.adjoint.AdjointODE(max_steps=2),
        nd.adjoint.Neumann(K=1),
        nd.adjoint.Linear(lx.GMRES(rtol=1e-10, atol=1e-12, max_steps=3, restart=2)),
    ],
    ids=["adjoint-ode", "neumann", "krylov"],
)
def test_rbp_adjoint_out_of_budget_at_a_stable_equilibrium(ctrnn, adjoint):
    """The forward relaxation converges at a stable equilibrium; only the adjoint runs out
    of iterations. Catches: RBP's `converged` dropping `adjoint_converged`, the result
    naming `unstable_equilibrium` (or success), `AdjointODE` or `Neumann` judging
    convergence by finiteness alone."""
    net, x, y = ctrnn
    _, _, info = _vg(net, x, y, nd.RBP(adjoint=adjoint))
    assert bool(info["forward_converged"]) and not bool(info["unstable"])
    assert not bool(info["adjoint_converged"]) and not bool(info["converged"])
    assert info["result"] == R.adjoint_max_steps_reached
    # The same equilibrium with the default budget: success.
    _, _, info = _vg(net, x, y, nd.RBP())
    assert bool(info["converged"]) and info["result"] == R.successful


def test_ep_one_nudged_phase_diverging_alone_is_reported(hop):
    """With beta = 2 and dt0 = 0.5 the +beta phase (output decay rate 1 + beta) is stable
    and the -beta phase (rate 1 - beta < 0) diverges: the one-sided variant, which runs
    only +beta, converges. Catches: `nudged_ok` taken from one phase (`[0]`) or `any`."""
    net, x, y = hop
    _, _, info = _vg(net, x, y, nd.EP(2.0, "one-sided"), dt0=0.5)
    assert bool(info["converged"]) and bool(info["nudged_converged"])
    _, grads, info = _vg(net, x, y, nd.EP(2.0, "centered"), dt0=0.5)
    assert bool(info["forward_converged"]) and not bool(info["nudged_converged"])
    assert not bool(info["converged"])
    assert info["result"] == R.nonfinite


def test_rtrl_started_at_its_equilibrium_still_relaxes_the_sensitivities(ctrnn):
    """With `x = 0` and `b = 0` the CTRNN's equilibrium is `r* = 0`, its initial state:
    `r` never moves, but `p = dr/dw` starts at 0, far from `p* = -J^-1 dF/dw`. Catches:
    RTRL's steady-state stop testing `r` alone (it then stops after one step, reporting
    converged with the gradient of `b` about 50% off)."""
    net, _, y = ctrnn
    x = jnp.zeros(net.n_in)
    r_star, _ = nd.relax(net, x)
    assert float(jnp.max(jnp.abs(r_star))) == 0.0
    loss, grads, info = _vg(net, x, y, nd.RTRL())
    ref_loss, ref, _ = dense_ift_grad(net, x, y)
    assert bool(info["converged"]) and int(info["steps"]) > 5
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert rel_error(grads.b, ref.b) < 1e-6
    assert rel_error(grads, ref) < 1e-6


def test_adjoint_ode_tolerance_is_relative_to_the_adjoint_state():
    """float32, `|v| ~ 500 |dl/dr|` (a slow mode, lambda = -1e-3): the residual test
    `rtol (rms(g) + rms(v))` stops the solve in ~4,500 steps. Catches: the relative term
    `rms(v)` dropped (the solve then runs to its 10,000-step budget)."""
    n = 16
    q, _ = jnp.linalg.qr(jr.normal(jr.PRNGKey(1), (n, n)))
    A = ((q * -jnp.geomspace(1e-3, 1.9, n)[None, :]) @ q.T).astype(jnp.float32)
    g = jr.normal(jr.PRNGKey(2), (n,)).astype(jnp.float32)
    solver = nd.adjoint.AdjointODE()
    sol = jax.jit(lambda A, g: solver.solve(lambda u: A.T @ u, g, None, True, 1.0))(A, g)
    v = sol.value
    assert bool(sol.converged)
    assert int(sol.steps) < 0.6 * solver.max_steps
    v_ref = np.linalg.solve(np.asarray(A, np.float64).T, -np.asarray(g, np.float64))
    assert np.linalg.norm(np.asarray(v, np.float64) - v_ref) < 2e-2 * np.linalg.norm(v_ref)


class SlowWell(nd.networks.AbstractEnergyNetwork):
    """Test-only: `E = eps/2 ||r - a||^2`, read out directly. The free relaxation decays at
    the slow rate `eps`; a one-sided nudge adds `beta` to it, so the nudged phase converges
    where the free one runs out of steps."""

    a: jax.Array
    eps: float = eqx.field(static=True)
    n_state: int = eqx.field(static=True, default=2)
    n_in: int = eqx.field(static=True, default=1)
    n_out: int = eqx.field(static=True, default=2)

    def energy(self, r, x):
        return 0.5 * self.eps * jnp.sum(jnp.square(r - self.a)) - jnp.sum(r) * x[0]

    def __call__(self, t, r, x):
        return -self.eps * (r - self.a) + x[0]

    def init_state(self, x):
        return jnp.zeros((2,), self.a.dtype)

    def readout(self, r):
        return r


def test_ep_free_phase_out_of_steps_alone_is_reported():
    """Only EP's free phase fails (its nudged phase converges within the same budget).
    Catches: EP's `converged` or `result` ignoring the free phase."""
    net = SlowWell(jnp.array([1.0, -0.5]), 0.01)
    x, y = jnp.zeros(1), jnp.array([0.5, 0.5])
    _, _, info = _vg(net, x, y, nd.EP(0.9, "one-sided"), max_steps=100)
    assert not bool(info["forward_converged"]) and bool(info["nudged_converged"])
    assert not bool(info["converged"])
    assert info["result"] == R.max_steps_reached


STEADY = [nd.BPTT(), nd.RBP(), nd.EP(0.01), nd.RTRL()]
STEADY_IDS = ["bptt", "rbp", "ep", "rtrl"]


@pytest.mark.parametrize("est", STEADY, ids=STEADY_IDS)
def test_forward_relaxation_out_of_steps_alone_is_reported(hop, est):
    """Catches an estimator whose `converged`/`result` ignores the forward relaxation."""
    net, x, y = hop
    _, _, info = _vg(net, x, y, est, max_steps=3)
    assert not bool(info["converged"])
    assert info["result"] == R.max_steps_reached
    if "forward_converged" in info:
        assert not bool(info["forward_converged"])


@pytest.mark.parametrize("est", STEADY, ids=STEADY_IDS)
def test_forward_relaxation_nonfinite_is_reported_as_such(ctrnn, est):
    """A NaN input makes the state NaN: the relaxation's own reason (`nonfinite`) is
    reported, not only the catch-all of `flag_nonfinite`. Catches: a solve's non-finite
    check removed (the result then reads `nonfinite_gradient`)."""
    net, x, y = ctrnn
    _, _, info = _vg(net, x.at[0].set(jnp.nan), y, est)
    assert not bool(info["converged"])
    assert info["result"] == R.nonfinite


@pytest.mark.parametrize(
    "est", [nd.BPTT(), nd.BPTT(checkpoints=2), nd.RTRL()], ids=["bptt", "bptt-checkpointed", "rtrl"]
)
def test_trajectory_nonfinite_is_reported_as_such(ctrnn, est):
    """A NaN in the second input row: the rollout's own reason (`nonfinite`). Catches: the
    trajectory's finite check of BPTT or RTRL removed."""
    net, _, y = ctrnn
    xs = jnp.ones((3, net.n_in)).at[1, 0].set(jnp.nan)
    obj = nd.Trajectory(ts=[0.5, 1.0, 1.5])
    _, _, info = _vg(net, xs, jnp.stack([y, y, y]), est, obj)
    assert not bool(info["converged"])
    assert info["result"] == R.nonfinite
