"""UORO's variance report (UORO: Tallec & Ollivier 2018): a second, independent rank-one
pair gives one-run unbiased estimates of the variance of the sensitivities and of the
gradient, checked against the empirical variance over many keys, with tolerances from the
measured sampling errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import neurodyn as nd
from helpers import assert_tree_close, EULER1, flat_grads


T = 5
NET = nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, "rate", key=jr.PRNGKey(7))
XS, YS = jr.uniform(jr.PRNGKey(1), (T, 3)), jr.normal(jr.PRNGKey(2), (T, 2))
# The loss at the last step only (a class read at the end of a sequence): the state part of
# the gradient is g_r^T p_T, whose variance `report` estimates from the final state.
LAST = nd.Trajectory(ts=np.arange(1, T + 1), weights=jnp.asarray([0.0] * (T - 1) + [1.0]))
K = 1024


def _final(sens):
    # p_T and g_r = dl/dr at T through nd.rtrl's public stepper (as nd.RTRL runs it).
    params, static = eqx.partition(NET, eqx.is_inexact_array)
    r0 = NET.init_state(XS[0])
    n = r0.shape[0]
    aux = nd.rtrl.sensitivity_aux(sens, params, static, n, NET.n_in, r0.dtype)
    _, step = nd.rtrl.joint_step(diffrax.Euler(), params, static, sens, aux)
    state = (r0, nd.rtrl.zero_sensitivities(sens, params, n, aux))
    for k in range(T):
        state = nd.rtrl.integrate_interval_joint(step, state, XS[k], jnp.asarray(float(k)), jnp.asarray(1.0), 1)
    r, p = state
    g_r = jax.grad(lambda r: nd.losses.squared_error(NET.readout(r), YS[-1]))(r)
    return p, g_r, aux


def _flat_p(p):
    # Every strategy's p as one (n, m) matrix: u v^T for UORO, the dense leaves for Exact.
    if isinstance(p, tuple):
        return jnp.outer(p[0], flat_grads(p[1]))
    return jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(p)], axis=1)


def _agree(estimates, samples, what):
    # mean(estimates) and the sample mean of `samples` (both unbiased for the same
    # quantity; `samples` may be one exact value) agree within 4 combined standard errors.
    samples = np.atleast_1d(samples)
    est, emp = float(np.mean(estimates)), float(np.mean(samples))
    se = float(np.sqrt(np.var(estimates) / len(estimates) + np.var(samples) / len(samples)))
    print(
        f"{what}: mean of {len(estimates)} one-run estimates {est:.4g}, reference {emp:.4g} (standard error {se:.2g})"
    )
    assert abs(est - emp) < 4 * se, what
    assert se < 0.1 * abs(emp), f"{what}: too few keys to test"


def test_uoro_variance_estimates_match_the_spread_over_keys():
    # Observed (K = 1024; standard errors from the samples themselves, which are
    # heavy-tailed: UORO's noise multiplies): total variance of p, mean of the one-run
    # estimates 186.1 vs 189.1 over the keys (s.e. 5.1); of the gradient 14.21 vs 14.20
    # (s.e. 0.70); ||p||^2 16.2 vs 15.96 exact (s.e. 1.2). One draw's variance is ~12x
    # ||p||^2 here: one draw is mostly noise.
    p_dense, g_r_exact, _ = eqx.filter_jit(_final)(nd.rtrl.Exact())
    p_exact = _flat_p(p_dense)

    @eqx.filter_jit
    def draws(keys):
        def one(key):
            sens = nd.rtrl.UORO(key, variance=True)
            p, g_r, aux = _final(sens)
            _, g, info = nd.value_and_grad(NET, XS, YS, objective=LAST, estimator=nd.RTRL(sens), **EULER1)
            rep = nd.rtrl.report(sens, p, aux, g_r)
            return _flat_p(p), flat_grads(sens.contract(p, g_r, aux)), flat_grads(g), rep, p

        return jax.vmap(one)(keys)

    ps, g_state, g, rep, ps_state = draws(jr.split(jr.PRNGKey(11), K))
    mean_p = ps.mean(0)
    np.testing.assert_allclose(mean_p, p_exact, atol=6 * float(jnp.max(ps.std(0))) / np.sqrt(K))

    sq_p = jnp.sum(jnp.square(ps - p_exact[None]), axis=(1, 2))  # E = total variance (p exact known)
    _agree(np.asarray(rep["uoro_variance"]), np.asarray(sq_p), "variance of p")
    _agree(np.asarray(rep["uoro_signal"]), float(jnp.sum(p_exact**2)), "||p||^2")
    state_exact = flat_grads(jax.tree.map(lambda a: jnp.tensordot(g_r_exact, a, axes=1), p_dense))
    sq_g = jnp.sum(jnp.square(g_state - state_exact[None]), axis=1)
    _agree(np.asarray(rep["uoro_grad_variance"]), np.asarray(sq_g), "variance of the gradient")
    # ... and the estimator's own gradients spread alike (their direct part is not random).
    sq_est = jnp.sum(jnp.square(g - g.mean(0)[None]), axis=1) * K / (K - 1)
    _agree(np.asarray(rep["uoro_grad_variance"]), np.asarray(sq_est), "variance of nd.RTRL(UORO)'s gradient")
    # The factor norms are reported always; ||u|| ||v|| = ||u v^T||_F.
    np.testing.assert_allclose(
        rep["uoro_u_norm"] * rep["uoro_v_norm"], jnp.sqrt(jnp.sum(ps**2, axis=(1, 2))), rtol=1e-10
    )
    # Without the second pair only the norms (the first three entries of the state).
    p = jax.tree.map(lambda a: a[0], ps_state)
    assert set(nd.rtrl.report(nd.rtrl.UORO(0), p[:3], None)) == {"uoro_u_norm", "uoro_v_norm"}


def test_uoro_variance_pair_leaves_the_gradient_unchanged():
    kw = dict(objective=nd.Trajectory(ts=np.arange(1, T + 1)), **EULER1)
    _, g1, _ = nd.value_and_grad(NET, XS, YS, estimator=nd.RTRL(nd.rtrl.UORO(3)), **kw)
    _, g2, info = nd.value_and_grad(NET, XS, YS, estimator=nd.RTRL(nd.rtrl.UORO(3, variance=True)), **kw)
    assert bool(info["converged"])
    assert_tree_close(g2, g1, rtol=0, atol=0)
    # The estimator's info carries the report of the last step's sensitivities, per example
    # on the batch path.
    assert {"uoro_u_norm", "uoro_v_norm", "uoro_variance", "uoro_signal"} <= set(info)
    assert float(info["uoro_variance"]) >= 0 and float(info["uoro_u_norm"]) > 0
    _, _, binfo = nd.batch_value_and_grad(
        NET, XS[None].repeat(2, 0), YS[None].repeat(2, 0), estimator=nd.RTRL(nd.rtrl.UORO(3)), **kw
    )
    assert binfo["uoro_u_norm"].shape == (2,) and "uoro_variance" not in binfo
    # A strategy without a report reports nothing.
    assert nd.rtrl.report(nd.rtrl.Exact(), None, None) == {}


def test_uoro_signs_follow_the_input():
    # With mix_input (the default) the examples of a batch draw different signs; without,
    # every example and every call draws the key's.
    xs, ys = jnp.stack([XS, XS, XS[::-1]]), jnp.stack([YS, YS, YS])
    kw = dict(objective=nd.Trajectory(ts=np.arange(1, T + 1)), **EULER1)

    def per_example(sens):
        def one(x, y):
            return flat_grads(nd.value_and_grad(NET, x, y, estimator=nd.RTRL(sens), **kw)[1])

        return jax.vmap(one)(xs, ys)

    mixed, fixed = per_example(nd.rtrl.UORO(0)), per_example(nd.rtrl.UORO(0, mix_input=False))
    np.testing.assert_array_equal(mixed[0], mixed[1])  # the same input, the same signs
    exact = [flat_grads(nd.value_and_grad(NET, x, YS, estimator=nd.RTRL(), **kw)[1]) for x in (XS, XS[::-1])]

    def noise_cosine(g):
        # The noise (draw minus exact gradient) of the two inputs: unrelated with mixed
        # signs, aligned when both draw the same signs.
        a, b = g[0] - exact[0], g[2] - exact[1]
        return float(a @ b / jnp.linalg.norm(a) / jnp.linalg.norm(b))

    c_mixed, c_fixed = noise_cosine(mixed), noise_cosine(fixed)
    print(f"noise cosine between two inputs: mix_input {c_mixed:.3f}, fixed signs {c_fixed:.3f}")
    assert abs(c_mixed) < abs(c_fixed)
