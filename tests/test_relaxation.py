"""Forward relaxation strategies: same steady state, the fixed-step loop unchanged,
Anderson's savings, warm starts, non-convergence as data, and the errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import assert_tree_close, dense_ift_grad, small_networks
from neurodyn._dynamics import relax_loop
from neurodyn._options import steady_state_options


NETWORKS = small_networks(jr.PRNGKey(77))
STRATEGIES = [
    ("fixed", nd.relaxation.FixedStep()),
    ("fixed-chunked", nd.relaxation.FixedStep(check_every=3)),
    ("anderson", nd.relaxation.Anderson()),
    ("newton-krylov", nd.relaxation.NewtonKrylov()),
    ("backoff", nd.relaxation.Backoff()),
]


def _newton_fixed_point(net, x):
    # Independent of the library's loops: a long fixed-step relaxation polished by Newton.
    return dense_ift_grad(net, x, jnp.zeros(net.n_out))[2]


QUICK = [(n, net) for n, net in NETWORKS if n in ("ctrnn-current", "hopfield")]


@pytest.mark.parametrize("name,net", QUICK, ids=[n for n, _ in QUICK])
def test_every_strategy_finds_the_steady_state(name, net, getkey):
    _check_strategies(net, getkey)


@pytest.mark.slow
@pytest.mark.parametrize("name,net", NETWORKS, ids=[n for n, _ in NETWORKS])
def test_every_strategy_on_every_network(name, net, getkey):
    _check_strategies(net, getkey)


def _check_strategies(net, getkey):
    x = jr.uniform(getkey(), (net.n_in,))
    ref = _newton_fixed_point(net, x)
    for sname, rel in STRATEGIES:
        r, info = nd.relax(net, x, relaxation=rel, dt0=0.5)
        assert bool(info["converged"]), (sname, info)
        assert info["result"] == nd.RESULTS.successful
        assert float(info["residual"]) < 1e-9, sname
        np.testing.assert_allclose(r, ref, rtol=1e-8, atol=1e-9, err_msg=sname)


@pytest.mark.parametrize("sname,rel", STRATEGIES + [("default", None)], ids=[n for n, _ in STRATEGIES] + ["default"])
def test_info_residual_is_what_the_tolerance_judged(sname, rel, getkey):
    # `converged` is exactly `residual <= atol + rtol rms(r)`, converged or cut short by
    # max_steps; for the stepping strategies the residual is the last step difference over
    # dt0 (Euler: rms(F) one step before r, which the contraction has since reduced).
    net = nd.networks.CTRNN(12, 3, 2, gain=0.8, key=getkey())
    x = jr.uniform(getkey(), (3,))
    rtol, atol = 1e-8, 1e-10
    kw = dict(dt0=0.5, rtol=rtol, atol=atol) | ({} if rel is None else dict(relaxation=rel))
    for max_steps in (2, 10_000):
        r, info = nd.relax(net, x, max_steps=max_steps, **kw)
        tol = atol + rtol * float(nd._misc.rms_norm(r))
        res = float(info["residual"])
        assert np.isfinite(res) and bool(info["converged"]) == (res <= tol), (sname, max_steps, res, tol)
        assert bool(info["converged"]) == (max_steps > 2), (sname, max_steps)
        true_res = float(nd._misc.rms_norm(net(0.0, r, x)))
        if sname == "newton-krylov":
            np.testing.assert_allclose(res, true_res, rtol=1e-10)
        elif sname != "anderson":
            # One contracting Euler step after the measured one: rms(F(r)) is below it.
            assert true_res < res, (sname, max_steps, true_res, res)


def test_fixed_step_is_the_plain_loop_and_the_default_chunks_it(getkey):
    # FixedStep() is the plain Euler loop BPTT differentiates: same state, same step count
    # as a hand-written loop that stops at the first step difference below the tolerance.
    net = nd.networks.CTRNN(6, 3, 2, key=getkey())
    x = jr.normal(getkey(), (3,))
    r_fs, info_fs = nd.relax(net, x, relaxation=nd.relaxation.FixedStep())
    r, k = net.init_state(x), 0
    while True:
        r1 = r + net(0.0, r, x)
        k += 1
        done = nd._misc.rms_norm(r1 - r) < 1e-12 + 1e-10 * nd._misc.rms_norm(r1)
        r = r1
        if done:
            break
    assert k == int(info_fs["steps"])
    np.testing.assert_allclose(r_fs, r, rtol=0, atol=1e-15)
    # The default tests every other step: at most one step more, the same tolerance met.
    r_def, info = nd.relax(net, x)
    assert int(info["steps"]) in (k, k + 1) and int(info["steps"]) % 2 == 0 and bool(info["converged"])
    np.testing.assert_allclose(r_def, r, rtol=0, atol=1e-10)
    # Chunks of 4 overshoot by less than one chunk, and never pass max_steps.
    _, info4 = nd.relax(net, x, relaxation=nd.relaxation.FixedStep(check_every=4))
    assert int(info4["steps"]) % 4 == 0 and k <= int(info4["steps"]) < k + 4
    for m in (3, 5):
        _, info_m = nd.relax(net, x, max_steps=m)
        assert int(info_m["steps"]) == m and not bool(info_m["converged"])
        r_m, _ = nd.relax(net, x, max_steps=m, relaxation=nd.relaxation.FixedStep())
        r_m2, _ = nd.relax(net, x, max_steps=m)
        np.testing.assert_allclose(r_m2, r_m, rtol=0, atol=1e-15)


def test_anderson_saves_steps_when_the_iteration_is_slow(getkey):
    # dt0 = 0.1: the plain iteration contracts at ~0.9 per step; Anderson should need far fewer.
    net = nd.networks.CTRNN(16, 3, 2, key=getkey())
    x = jr.normal(getkey(), (3,))
    r_fs, i_fs = nd.relax(net, x, dt0=0.1)
    r_aa, i_aa = nd.relax(net, x, dt0=0.1, relaxation=nd.relaxation.Anderson())
    assert bool(i_fs["converged"]) and bool(i_aa["converged"])
    assert int(i_aa["steps"]) < 0.5 * int(i_fs["steps"]), (i_aa["steps"], i_fs["steps"])
    np.testing.assert_allclose(r_aa, r_fs, rtol=1e-8, atol=1e-9)


@pytest.mark.slow
def test_anderson_with_an_fsal_solver_and_under_vmap(getkey):
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    xs = jr.uniform(getkey(), (4, 3))
    opts = dict(solver=diffrax.Tsit5(), dt0=0.5, relaxation=nd.relaxation.Anderson(m=3))
    rs, info = jax.vmap(lambda x: nd.relax(net, x, **opts))(xs)
    assert bool(jnp.all(info["converged"]))
    for i in range(4):
        np.testing.assert_allclose(rs[i], _newton_fixed_point(net, xs[i]), rtol=1e-8, atol=1e-9)


def test_warm_start_from_a_nearby_steady_state(getkey):
    net = nd.networks.CTRNN(8, 3, 2, key=getkey())
    x = jr.normal(getkey(), (3,))
    for rel in (nd.relaxation.FixedStep(), nd.relaxation.Anderson()):
        r_star, cold = nd.relax(net, x, relaxation=rel)
        # After a small parameter update (a training step), the old r* is a good start.
        moved = eqx.tree_at(lambda n: n.b, net, net.b + 1e-3)
        r_new, cold_new = nd.relax(moved, x, relaxation=rel)
        r_warm, warm = nd.relax(moved, x, r0=r_star, relaxation=rel)
        assert bool(warm["converged"])
        assert int(warm["steps"]) < int(cold_new["steps"]), (warm["steps"], cold_new["steps"])
        np.testing.assert_allclose(r_warm, r_new, rtol=1e-8, atol=1e-9)
        _, again = nd.relax(net, x, r0=r_star, relaxation=rel)
        assert int(again["steps"]) <= 2 and int(cold["steps"]) > 10


def test_non_convergence_is_data(getkey):
    net = nd.networks.CTRNN(8, 3, 2, key=getkey())
    x = jr.normal(getkey(), (3,))
    for rel in (nd.relaxation.FixedStep(), nd.relaxation.Anderson()):
        _, info = nd.relax(net, x, relaxation=rel, max_steps=3)
        assert not bool(info["converged"]) and int(info["steps"]) == 3
        assert info["result"] == nd.RESULTS.max_steps_reached
    # Euler with dt0 = 2.5 on dr/dt = -r + ... oscillates and blows up: non-finite, not converged.
    big = nd.networks.CTRNN(8, 3, 2, gain=0.1, key=getkey())
    _, info = nd.relax(big, x, dt0=2.5, max_steps=2000)
    assert not bool(info["converged"]) and info["result"] == nd.RESULTS.nonfinite


@pytest.mark.slow
def test_relax_loop_forcing_with_any_strategy(getkey):
    # EP's nudged phases call relax_loop(..., forcing=fn, r0=r_free); every strategy must agree.
    net = nd.networks.Hopfield(3, 5, 2, key=getkey())
    x = jr.uniform(getkey(), (3,))
    out = []
    for _, rel in STRATEGIES:
        opts = steady_state_options(jnp.float64, dt0=0.5, relaxation=rel)
        r_free, _ = relax_loop(net, x, net.init_state(x), opts)
        r, info = relax_loop(net, x, r_free, opts, forcing=lambda r: -0.1 * (r - 1.0))
        assert bool(info["converged"])
        out.append(r)
    for r in out[1:]:
        np.testing.assert_allclose(r, out[0], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    "form,rel",
    [("current", nd.relaxation.Anderson()), ("rate", nd.relaxation.NewtonKrylov())],
    ids=["anderson", "newton-krylov"],
)
def test_rbp_with_another_relaxation_is_exact(form, rel, getkey):
    net = nd.networks.CTRNN(6, 3, 2, form=form, key=getkey())
    x, y = jr.normal(getkey(), (3,)), jr.normal(getkey(), (2,))
    _, g, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.RBP(), relaxation=rel)
    _, ref, _ = dense_ift_grad(net, x, y)
    assert bool(info["converged"])
    assert_tree_close(g, ref, rtol=1e-7, atol=1e-10, what=f"rbp+{rel!r}")


def test_bptt_keeps_its_fixed_step_loop_and_errors_are_pinned(getkey):
    net = nd.networks.CTRNN(4, 3, 2, key=getkey())
    x, y = jnp.ones(3), jnp.zeros(2)
    with pytest.raises(ValueError, match="cannot be differentiated through: BPTT"):
        nd.value_and_grad(
            net, x, y, objective=nd.SteadyState(), estimator=nd.BPTT(), relaxation=nd.relaxation.Anderson()
        )
    with pytest.raises(ValueError, match="does not apply to a trajectory"):
        nd.rollout(net, jnp.ones((2, 3)), [1.0, 2.0], relaxation=nd.relaxation.FixedStep())
    with pytest.raises(ValueError, match="must be an nd.relaxation strategy"):
        nd.relax(net, x, relaxation="anderson")
    with pytest.raises(ValueError, match="Anderson needs a history"):
        nd.relaxation.Anderson(m=0)
    with pytest.raises(ValueError, match="FixedStep needs check_every >= 1"):
        nd.relaxation.FixedStep(check_every=0)
    with pytest.raises(TypeError, match="Did you mean `relaxation`"):
        nd.relax(net, x, relaxtion=nd.relaxation.FixedStep())
    # An explicit FixedStep is accepted by BPTT and gives its usual gradient.
    _, g1, _ = nd.value_and_grad(
        net, x, y, objective=nd.SteadyState(), estimator=nd.BPTT(), relaxation=nd.relaxation.FixedStep()
    )
    _, g0, _ = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=nd.BPTT())
    assert_tree_close(g1, g0, rtol=0, atol=0, what="bptt")


def test_fixed_step_with_multistage_and_fsal_solvers(getkey):
    # The solver state (Tsit5's FSAL derivative) is carried through the loop and the chunks.
    net = nd.networks.CTRNN(5, 3, 2, key=getkey())
    x = jr.normal(getkey(), (3,))
    ref = _newton_fixed_point(net, x)
    for solver in (diffrax.Heun(), diffrax.Tsit5()):
        for rel in (nd.relaxation.FixedStep(), None):
            opts = dict(solver=solver, dt0=0.2) if rel is None else dict(solver=solver, dt0=0.2, relaxation=rel)
            r, info = nd.relax(net, x, **opts)
            assert bool(info["converged"]), (solver, rel)
            np.testing.assert_allclose(r, ref, rtol=1e-8, atol=1e-9)


def test_newton_krylov_needs_few_steps_where_the_iteration_is_slow(getkey):
    # Gain 0.95: the fixed-step iteration contracts slowly; Newton converges quadratically
    # (up to the inner GMRES tolerance) and its step count does not depend on the gain.
    net = nd.networks.CTRNN(32, 3, 2, gain=0.95, key=getkey())
    x = jr.normal(getkey(), (3,))
    r_fs, i_fs = nd.relax(net, x)
    r_nk, i_nk = nd.relax(net, x, relaxation=nd.relaxation.NewtonKrylov())
    assert bool(i_fs["converged"]) and bool(i_nk["converged"])
    assert int(i_nk["steps"]) <= 8 < 3 * 8 <= int(i_fs["steps"]), (i_nk["steps"], i_fs["steps"])
    np.testing.assert_allclose(r_nk, r_fs, rtol=1e-8, atol=1e-9)
    # Its reported residual is rms(F(r)) itself.
    np.testing.assert_allclose(i_nk["residual"], nd._misc.rms_norm(net(0.0, r_nk, x)), rtol=1e-12)
    # Warm started at the steady state it stops after one step; a budget of one step is data.
    _, again = nd.relax(net, x, r0=r_nk, relaxation=nd.relaxation.NewtonKrylov())
    assert int(again["steps"]) == 1 and bool(again["converged"])
    _, short = nd.relax(net, x, relaxation=nd.relaxation.NewtonKrylov(), max_steps=1)
    assert not bool(short["converged"]) and short["result"] == nd.RESULTS.max_steps_reached


@pytest.mark.parametrize("name,rel", STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_a_zero_steady_state_with_zero_atol_stops(name, rel, getkey):
    # r* = 0 (no input, no bias) and atol = 0: the residual reaches exactly 0 = tol, and the
    # loop must stop there (a strict `<` ran it to max_steps).
    net = nd.networks.CTRNN(6, 3, 2, key=getkey())
    net = eqx.tree_at(lambda m: m.b, net, jnp.zeros(6))
    r, info = nd.relax(net, jnp.zeros(3), atol=0.0, relaxation=rel)
    assert bool(info["converged"]) and int(info["steps"]) <= 3, (name, info["steps"])
    np.testing.assert_array_equal(r, 0.0)
