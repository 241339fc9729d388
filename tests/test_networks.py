"""Published results about the networks themselves: the feedforward ODE (Almeida 1987;
Pineda 1987), the discrete-time network (Werbos 1990) and the activations (Haykin 2009, ch. 4)."""

import contextlib

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import neurodyn as nd
from helpers import EULER1


ACTIVATIONS = [
    ("identity", nd.activations.identity, lambda z: z),
    ("logistic", nd.activations.logistic, lambda z: 1 / (1 + np.exp(-z))),
    ("tanh", nd.activations.tanh, np.tanh),
    ("hard_logistic", nd.activations.hard_logistic, lambda z: np.maximum(np.minimum(0.25 * z + 0.5, 1), 0)),
    ("hard_tanh", nd.activations.hard_tanh, lambda z: np.maximum(np.minimum(z, 1), -1)),
    ("relu", nd.activations.relu, lambda z: np.maximum(0, z)),
    ("leaky_relu", nd.activations.leaky_relu, lambda z: np.maximum(0, z) + 0.01 * np.minimum(0, z)),
    ("elu", nd.activations.elu, lambda z: np.maximum(0, z) + np.minimum(0, np.exp(z) - 1)),
    ("softplus", nd.activations.softplus, lambda z: np.log1p(np.exp(z))),
]


@pytest.mark.parametrize("name,act,ref", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_formulas(name, act, ref):
    z = np.linspace(-5, 5, 41)
    np.testing.assert_allclose(np.asarray(act(jnp.asarray(z))), ref(z), rtol=1e-12, atol=1e-12)


def test_prelu_and_maxout_are_learnable_per_neuron(getkey):
    net = nd.networks.CTRNN(5, 2, 1, nd.activations.PReLU(0.2), key=getkey())
    assert net.activation.slope.shape == (5,)
    z = jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(net.activation(z), [-0.4, -0.2, 0.0, 1.0, 2.0])
    mo = nd.activations.materialise(nd.activations.Maxout(3), 5, getkey())
    a, c = np.asarray(mo.a), np.asarray(mo.c)
    expected = np.max(a * np.asarray(z)[:, None] + c, axis=-1)
    np.testing.assert_allclose(mo(z), expected, rtol=1e-12)
    # Both are parameters: the gradient reaches them.
    grads = eqx.filter_grad(lambda m: jnp.sum(m(z) ** 2))(mo)
    assert grads.a.shape == (5, 3) and float(jnp.abs(grads.a).sum()) > 0
    with pytest.raises(ValueError, match="Maxout has no parameters yet"):
        nd.activations.Maxout(2)(z)


@pytest.mark.parametrize("name,act,_", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_every_network_takes_every_activation(name, act, _, getkey):
    k = jr.split(getkey(), 3)
    jumps = name in ("hard_logistic", "hard_tanh")  # warned about: see the test below
    with pytest.warns(UserWarning, match="slope jumps") if jumps else contextlib.nullcontext():
        hopfield = nd.networks.Hopfield(2, 3, 1, act, key=k[1])
    for net in (nd.networks.CTRNN(4, 2, 1, act, key=k[0]), hopfield, nd.networks.Layered((2, 3, 1), act, key=k[2])):
        r = jnp.linspace(-0.5, 0.5, net.n_state)
        out = net(0.0, r, jnp.ones(2))
        assert out.shape == (net.n_state,) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize(
    "act", [nd.activations.hard_logistic, nd.activations.hard_tanh], ids=["hard_logistic", "hard_tanh"]
)
def test_energy_networks_warn_about_a_slope_that_jumps_off_zero(act, getkey):
    """The warning names the network, the activation, where its slope jumps and the fix;
    activations whose slope is continuous or jumps at zero construct silently (the suite
    turns any warning into an error)."""
    for make in (
        lambda a: nd.networks.Hopfield(2, 3, 1, a, key=getkey()),
        lambda a: nd.networks.LayeredHopfield((2, 3, 1), a, key=getkey()),
    ):
        with pytest.warns(UserWarning, match=rf"Hopfield with {type(act).__name__}, whose slope jumps at z = \[-") as w:
            make(act)
        assert len(w) == 1 and "relu" in str(w[0].message) and "logistic, tanh" in str(w[0].message)
        for fine in (nd.activations.logistic, nd.activations.relu, nd.activations.leaky_relu, nd.activations.PReLU()):
            make(fine)


@pytest.mark.parametrize("dt0", [1.0, 0.1])
def test_a_unit_driven_past_a_slope_jump_has_no_equilibrium(dt0, getkey):
    """Why the warning: one output unit of a `LayeredHopfield` with `hard_logistic`, its
    drive 12 (past the jump at 8 = 4 x 2). Inside, `F = 3 - s > 1`; outside, `F = -s < -2`:
    no zero. The relaxation ends stagnated with the state chattering about the jump (within
    `dt0` times the field's size of it) and a residual of order one, at a large step and a
    small one. The same unit with `logistic` (continuous slope) converges (at dt0 = 0.1:
    its equilibrium's `J = -2.08` is beyond Euler's stability limit at dt0 = 1)."""
    with pytest.warns(UserWarning, match="slope jumps"):
        net = nd.networks.LayeredHopfield((1, 1), nd.activations.hard_logistic, key=getkey())
    net = eqx.tree_at(lambda m: m.weights, net, (jnp.array([[12.0]]),))
    x = jnp.ones(1)
    r, info = nd.relax(net, x, dt0=dt0)
    assert info["result"] == nd.RESULTS.stagnated and not bool(info["converged"])
    assert int(info["steps"]) < 1_000  # the stopping rules end it, not max_steps
    assert abs(float(r[0]) - 2.0) <= 3.0 * dt0 + 1e-6
    assert float(jnp.abs(net(0.0, r, x))[0]) >= 0.9
    smooth = eqx.tree_at(lambda m: m.activations, net, (nd.activations.logistic,))
    r_s, info_s = nd.relax(smooth, x, dt0=0.1)
    assert bool(info_s["converged"])
    np.testing.assert_allclose(r_s[0], 12.0 * jax.nn.sigmoid(r_s[0]) * (1 - jax.nn.sigmoid(r_s[0])), rtol=1e-6)


def test_layered_steady_state_is_the_mlp_forward_pass(getkey):
    # Almeida (1987), Pineda (1987): dx_l/dt = -x_l + f(W_l x_{l-1}); its steady state is the MLP's forward pass.
    net = nd.networks.Layered((4, 7, 5, 3), nd.activations.tanh, key=getkey())
    x = jr.normal(getkey(), (4,))
    r_star, info = nd.relax(net, x)
    assert bool(info["converged"])
    h = x
    expected = []
    for W, b, f in zip(net.weights, net.biases, [jnp.tanh, jnp.tanh, lambda z: z]):
        h = f(W @ h + b)
        expected.append(h)
    np.testing.assert_allclose(r_star, jnp.concatenate(expected), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(net.readout(r_star), h, rtol=1e-9, atol=1e-10)


def test_layered_jacobian_is_block_lower_triangular(getkey):
    net = nd.networks.Layered((3, 4, 5, 2), nd.activations.tanh, key=getkey())
    r = jr.normal(getkey(), (net.n_state,))
    J = jax.jacfwd(lambda r: net(0.0, r, jnp.ones(3)))(r)
    offsets = np.cumsum([0, 4, 5, 2])
    for i in range(3):
        for j in range(i + 1, 3):
            block = J[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]]
            assert float(jnp.abs(block).max()) == 0.0
    # J + I is nilpotent of order L = 3.
    N = J + jnp.eye(net.n_state)
    assert float(jnp.abs(N @ N @ N).max()) < 1e-12
    assert float(jnp.abs(N @ N).max()) > 1e-3


def test_euler_dt1_is_the_discrete_time_network(getkey):
    # The discrete-time network (Werbos 1990): x(t) = f(W x(t-1) + U x_in(t) + b) is Euler with dt = 1.
    net = nd.networks.CTRNN(6, 3, 2, nd.activations.tanh, "rate", key=getkey())
    net = eqx.tree_at(lambda n: n.b, net, jr.normal(getkey(), (6,)))
    T = 7
    xs = jr.normal(getkey(), (T, 3))
    rs, info = nd.rollout(net, xs, np.arange(1, T + 1), output="state", **EULER1)
    r = jnp.zeros(6)
    for t in range(T):
        r = jnp.tanh(net.W @ r + net.U @ xs[t] + net.b)
        np.testing.assert_allclose(rs[t], r, rtol=1e-12, atol=1e-14)
    ys, _ = nd.rollout(net, xs, np.arange(1, T + 1), **EULER1)
    np.testing.assert_allclose(ys, rs @ net.V.T + net.c[None], rtol=1e-12)
    assert int(info["steps"]) == T


def test_rollout_converges_to_the_fine_solution(getkey):
    net = nd.networks.CTRNN(5, 2, 2, key=getkey())
    xs = jr.normal(getkey(), (4, 2))
    ts = np.array([0.5, 1.0, 2.0, 3.5])
    coarse, _ = nd.rollout(net, xs, ts)
    fine, _ = nd.rollout(net, xs, ts, solver=diffrax.Tsit5(), dt0=0.005)
    np.testing.assert_allclose(coarse, fine, rtol=1e-6, atol=1e-8)


def test_hopfield_is_a_gradient_flow_with_symmetric_jacobian(getkey):
    net = nd.networks.Hopfield(3, 6, 2, key=getkey())
    x = jr.uniform(getkey(), (3,))
    r = jr.uniform(getkey(), (8,))
    F = net(0.0, r, x)
    np.testing.assert_allclose(F, -jax.grad(net.energy)(r, x), rtol=1e-12, atol=1e-14)
    J = jax.jacfwd(lambda r: net(0.0, r, x))(r)
    np.testing.assert_allclose(J, J.T, atol=1e-12)
    Ws = net.symmetric_weights
    np.testing.assert_allclose(np.diag(Ws), 0.0)
    np.testing.assert_allclose(Ws, Ws.T)
    assert net.readout(r).shape == (2,)


def test_hopfield_energy_matches_its_symmetric_form(getkey):
    # The energy is written without W_s (`rho^T W rho - sum_i W_ii rho_i^2`, no transpose of
    # W): its value and its parameter gradient must be the textbook form's, with
    # `W_s = (W + W^T)/2` and a zero diagonal, for a W that is neither symmetric nor
    # zero on its diagonal.
    net = nd.networks.Hopfield(3, 6, 2, key=getkey())
    net = eqx.tree_at(lambda m: m.W, net, net.W + jnp.diag(jr.normal(getkey(), (8,))))
    assert not np.allclose(net.W, net.W.T) and np.all(np.abs(np.diag(net.W)) > 0)
    x = jr.uniform(getkey(), (3,))
    r = jr.normal(getkey(), (8,))

    def textbook(m):
        rho = m.activation(r)
        return 0.5 * r @ r - 0.5 * rho @ m.symmetric_weights @ rho - rho @ (m.U @ x + m.b)

    np.testing.assert_allclose(net.energy(r, x), textbook(net), rtol=1e-12)
    g, g_ref = eqx.filter_grad(lambda m: m.energy(r, x))(net), eqx.filter_grad(textbook)(net)
    for name in ("W", "U", "b"):
        np.testing.assert_allclose(getattr(g, name), getattr(g_ref, name), rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_array_equal(np.diag(g.W), 0.0)


@pytest.mark.parametrize("n", [1024, 1030])
def test_symmetric_part_in_slabs_is_the_transpose_formula(n, getkey):
    # `(W + W^T)/2` of a matrix past 4 MiB runs as a loop over slabs of rows on the CPU
    # (XLA:CPU's fused strided transpose is several times slower there). Same values bit for
    # bit as the formula, under jit and vmap, with the formula's derivatives in both modes;
    # n = 1030 is padded to whole slabs.
    symmetric_part = nd.networks.symmetric_part
    A, C = jr.normal(getkey(), (n, n), jnp.float32), jr.normal(getkey(), (n, n), jnp.float32)
    sym = jax.jit(symmetric_part)
    assert "while" in sym.lower(A).compile().as_text()  # the slabs' loop, not the fused one
    np.testing.assert_array_equal(sym(A), 0.5 * (A + A.T))
    np.testing.assert_array_equal(jax.vmap(sym)(jnp.stack([A, C])), 0.5 * (jnp.stack([A + A.T, C + C.T])))
    np.testing.assert_array_equal(jax.grad(lambda A: jnp.vdot(C, sym(A)))(A), 0.5 * (C + C.T))
    np.testing.assert_array_equal(jax.jvp(sym, (A,), (C,))[1], 0.5 * (C + C.T))


def test_large_hopfield_relaxes_as_with_the_transpose_formula(getkey):
    # A dense Hopfield network past the slabs' threshold (n = 1024, float32): its relaxation
    # and RBP gradient equal those of the same network whose W_s and coupling are the plain
    # formula, differentiated as written.
    from experiments.benchmarks.symmetrize import FormulaHopfield as Plain

    def f32(m):
        return jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, m)

    key = getkey()
    net, plain = f32(nd.networks.Hopfield(4, 1020, 4, key=key)), f32(Plain(4, 1020, 4, key=key))
    xs, ys = jr.uniform(getkey(), (2, 4), jnp.float32), jr.uniform(getkey(), (2, 4), jnp.float32)
    obj = nd.SteadyState(nd.losses.squared_error)
    (loss, g, i), (loss_p, g_p, i_p) = (
        nd.batch_value_and_grad(m, xs, ys, objective=obj, estimator=nd.RBP()) for m in (net, plain)
    )
    assert bool(jnp.all(i["converged"]))
    np.testing.assert_array_equal(loss, loss_p)
    # The weight gradient: two products over the batch instead of one and a transpose, the
    # same sums in another order.
    np.testing.assert_allclose(g.W, g_p.W, rtol=1e-6, atol=1e-7 * float(jnp.max(jnp.abs(g_p.W))))
    np.testing.assert_array_equal(i["steps"], i_p["steps"])


def test_large_hopfield_coupling_derivatives_are_the_formulas(getkey):
    # Past 4 MiB the dense Hopfield coupling `W_s v` has a custom JVP whose `W` part avoids
    # the (n, n) transpose: every derivative (reverse, forward, second order, under vmap)
    # must be the formula's. Checked directly on a small float64 W.
    from neurodyn.networks._hopfield import _dense_coupling

    n, B = 7, 3
    W, V, G = jr.normal(getkey(), (n, n)), jr.normal(getkey(), (B, n)), jr.normal(getkey(), (B, n))
    dW, dV = jr.normal(getkey(), (n, n)), jr.normal(getkey(), (B, n))

    def ours(W, V):
        return jnp.vdot(G, jax.vmap(lambda v: _dense_coupling(W, v))(V))

    def formula(W, V):
        return jnp.vdot(G, V @ (0.5 * (W + W.T) * (1 - jnp.eye(n))))

    for a, b in zip(jax.grad(ours, (0, 1))(W, V), jax.grad(formula, (0, 1))(W, V), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jax.jvp(ours, (W, V), (dW, dV))[1], jax.jvp(formula, (W, V), (dW, dV))[1], rtol=1e-12)
    np.testing.assert_allclose(jax.hessian(ours)(W, V), jax.hessian(formula)(W, V), rtol=1e-12, atol=1e-13)


def test_relax_reports_non_convergence_without_nans(getkey):
    net = nd.networks.CTRNN(8, 2, 1, key=getkey())
    r, info = nd.relax(net, jnp.ones(2), max_steps=3)
    assert not bool(info["converged"]) and int(info["steps"]) == 3
    assert info["result"] == nd.RESULTS.max_steps_reached
    assert bool(jnp.all(jnp.isfinite(r)))


@pytest.mark.parametrize("seed", [1, 5, 6])
def test_relax_reports_divergence(seed):
    # Euler with dt = 3 on dr/dt = -r + ... is unstable: the state blows up.
    net = nd.networks.CTRNN(8, 2, 1, nd.activations.identity, gain=0.1, key=jr.PRNGKey(seed))
    r, info = nd.relax(net, jnp.ones(2), dt0=3.0, max_steps=5000)
    assert not bool(info["converged"])
    assert info["result"] == nd.RESULTS.nonfinite


def test_relax_vmaps_with_per_example_info(getkey):
    net = nd.networks.CTRNN(8, 2, 1, key=getkey())
    xs = jr.normal(getkey(), (5, 2))
    rs, info = jax.vmap(lambda x: nd.relax(net, x))(xs)
    assert rs.shape == (5, 8) and info["converged"].shape == (5,)
    assert bool(jnp.all(info["converged"]))
    for i in range(5):
        r, _ = nd.relax(net, xs[i])
        np.testing.assert_allclose(rs[i], r, rtol=1e-10)


def test_relax_warm_start_takes_fewer_steps(getkey):
    net = nd.networks.CTRNN(8, 2, 1, key=getkey())
    x = jnp.ones(2)
    r, info = nd.relax(net, x)
    _, info2 = nd.relax(net, x * 1.01, r0=r)
    assert int(info2["steps"]) < int(info["steps"])


def test_rms_norm_never_hides_divergence():
    from neurodyn._misc import rms_norm

    assert float(rms_norm(jnp.array([jnp.inf, 1.0]))) == np.inf
    assert float(rms_norm(jnp.array([jnp.nan, 1.0]))) == np.inf
    # Squares that overflow read as divergence too (inf), never as a small norm.
    assert float(rms_norm(jnp.array([1e300, -1e300]))) == np.inf
    assert float(rms_norm(jnp.array([3e19, 1.0], jnp.float32))) == np.inf
    assert float(rms_norm(jnp.array([3.0, -4.0]))) == pytest.approx(np.sqrt(12.5))
    # Half precision sums in float32: 300^2 overflows float16, the norm does not.
    assert float(rms_norm(jnp.array([300.0, 300.0], jnp.float16))) == pytest.approx(300.0)
    assert float(rms_norm(jnp.array([3.0 + 4.0j, 0.0]))) == pytest.approx(np.sqrt(12.5))
    assert float(rms_norm(jnp.zeros(3))) == 0.0
    np.testing.assert_array_equal(jax.grad(rms_norm)(jnp.zeros(2)), 0.0)
    # Jitted and vmapped too (the loops' form), NaN anywhere in a row: that row only.
    rows = jnp.ones((4, 300)).at[1, 299].set(jnp.nan).at[2, 0].set(-jnp.inf)
    np.testing.assert_array_equal(jax.jit(jax.vmap(rms_norm))(rows), [1.0, np.inf, np.inf, 1.0])


def test_an_overflowing_norm_is_divergence_not_convergence():
    # A finite iterate too large for its squared norm, standing still (res = 0): its
    # tolerance overflows to inf, which must not make it converged.
    class Still(nd.AbstractIterativeSolver):
        def init(self, y0, args):
            return None

        def step(self, y, state, args, iteration):
            return y, state, jnp.zeros((), y.dtype)

        def tolerance(self, y, args):
            return 1e-8 + 1e-6 * nd._misc.rms_norm(y)

    for y0, ok in ((jnp.full(4, 1e200), False), (jnp.full(4, 1e100), True)):
        sol = nd.iterate(Still(), y0, None, max_iterations=10)
        assert bool(sol.converged) == ok
        assert sol.result == (nd.RESULTS.successful if ok else nd.RESULTS.nonfinite)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 150, 299])
def test_all_finite_finds_one_bad_entry_anywhere(bad, where):
    from neurodyn._misc import all_finite

    good = {"w": jnp.ones((300,)), "c": jnp.array([1 + 2j, 3j]), "i": jnp.arange(3), "e": jnp.zeros((0,))}
    assert bool(all_finite(good)) and bool(jax.jit(all_finite)(good))
    assert bool(all_finite({})) and bool(all_finite({"huge": jnp.array([3e38, -3e38], jnp.float32)}))
    # Leaves of several float types: a float64 value past float32's range is still finite.
    mixed = {"a": jnp.array([1e300]), "b": jnp.ones(2, jnp.float32), "h": jnp.ones(2, jnp.bfloat16)}
    assert bool(all_finite(mixed)) and not bool(all_finite(dict(mixed, b=mixed["b"].at[1].set(bad))))
    broken = dict(good, w=good["w"].at[where].set(bad))
    assert not bool(all_finite(broken)) and not bool(jax.jit(all_finite)(broken))
    assert not bool(all_finite(dict(good, c=good["c"].at[1].set(bad))))
    # Per example under vmap: only the broken row.
    rows = jnp.ones((3, 300)).at[1, where].set(bad)
    np.testing.assert_array_equal(jax.vmap(all_finite)(rows), [True, False, True])


@pytest.mark.parametrize("act", [nd.activations.logistic, nd.activations.tanh, nd.activations.softplus])
def test_value_and_slope_and_its_derivative(act, getkey):
    # `(f, f')` with a derivative rule of its own for logistic and tanh (f'' in closed
    # form): values, slopes and their JVP must be autodiff's through jax.jvp of f, on real
    # and complex (holomorphic EP) arguments; softplus takes the generic path.
    z = jr.normal(getkey(), (7,))
    dz = jr.normal(getkey(), (7,))
    pair = lambda z: nd.activations.value_and_slope(act, z)  # noqa: E731
    generic = lambda z: jax.jvp(act, (z,), (jnp.ones_like(z),))  # noqa: E731
    for zz, dd in [(z, dz), (jax.lax.complex(z, 0.3 * dz), jax.lax.complex(dz, 0.2 * z))]:
        (v, s), (dv, ds) = jax.jvp(pair, (zz,), (dd,))
        (v_ref, s_ref), (dv_ref, ds_ref) = jax.jvp(generic, (zz,), (dd,))
        for got, want in [(v, v_ref), (s, s_ref), (dv, dv_ref), (ds, ds_ref)]:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
