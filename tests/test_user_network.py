"""A user's network: the rules of docs/bring_your_own.md, and the error that names a broken one."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import neurodyn as nd
from neurodyn import AbstractSurrogateEstimator, config as ndc


class TauRNN(nd.networks.AbstractNetwork):
    """The docs' example: a rate network with a learnable time constant per unit."""

    W: jax.Array
    U: jax.Array
    V: jax.Array
    log_tau: jax.Array
    n_state: int = eqx.field(static=True)
    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)

    def __init__(self, n, n_in, n_out, *, key):
        kw, ku, kv = jr.split(key, 3)
        self.W = 0.5 * jr.normal(kw, (n, n)) / jnp.sqrt(n)
        self.U = jr.normal(ku, (n, n_in)) / jnp.sqrt(n_in)
        self.V = jr.normal(kv, (n_out, n)) / jnp.sqrt(n)
        self.log_tau = jnp.zeros(n)
        self.n_state, self.n_in, self.n_out = n, n_in, n_out

    def __call__(self, t, r, x):
        return (-r + jnp.tanh(self.W @ r + self.U @ x)) / jnp.exp(self.log_tau)

    def init_state(self, x):
        return jnp.zeros(self.n_state, self.W.dtype)

    def readout(self, r):
        return self.V @ r


class OneStepRBP(AbstractSurrogateEstimator):
    """The docs' example estimator: RBP with the adjoint approximated by v = dl/dr* (as if the
    Jacobian were -I): Jacobian-free backprop (Fung et al. 2022)."""

    objectives = (nd.SteadyState,)

    def solve(self, net, x, y, objective, options):
        r, info = nd.relax(net, x, solver=options.solver, dt0=options.dt0, max_steps=options.max_steps)
        loss, g = jax.value_and_grad(lambda r: objective.value(net, r, y))(r)
        return loss, (r, g), info

    def surrogate(self, net, x, y, objective, residuals):
        r, v = residuals  # held fixed: the gradient in w is v dF/dw + dl/dw|readout
        return objective.value(net, r, y) + jnp.vdot(v, net(0.0, r, x))


class NotStatic(TauRNN):
    n_state: int  # the broken rule: a plain field, traced inside the estimators


class WrongInitState(TauRNN):
    def init_state(self, x):
        return jnp.zeros((1, self.n_state), self.W.dtype)


class FloatSize(TauRNN):
    def __init__(self, n, n_in, n_out, *, key):
        super().__init__(n, n_in, n_out, key=key)
        self.n_out = n / 3  # a float where an int belongs


def _args(n_in=3, n_out=2):
    return jnp.ones(n_in), jnp.zeros(n_out)


@pytest.mark.parametrize("estimator", [nd.BPTT(), nd.RBP(), nd.RTRL()])
def test_a_user_network_follows_the_rules_and_trains(estimator):
    net = TauRNN(6, 3, 2, key=jr.PRNGKey(0))
    x, y = _args()
    loss, grads, info = nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=estimator)
    assert bool(info["converged"]) and jnp.isfinite(loss)
    assert grads.log_tau.shape == (6,) and float(jnp.linalg.norm(grads.W)) > 0


@pytest.mark.parametrize("estimator", [nd.RBP(), nd.BPTT()])
def test_a_size_field_that_is_not_static_names_the_rule(estimator):
    net = NotStatic(6, 3, 2, key=jr.PRNGKey(0))
    x, y = _args()
    # Before the check: "Shapes must be 1D sequences of concrete values of integer type" deep in RBP.
    with pytest.raises(ValueError, match=r"NotStatic.n_state = 6: .*`n_state: int = eqx.field\(static=True\)`"):
        nd.value_and_grad(net, x, y, objective=nd.SteadyState(), estimator=estimator)
    with pytest.raises(ValueError, match=r"eqx.field\(static=True\)"):
        nd.batch_value_and_grad(
            net, jnp.ones((4, 3)), jnp.zeros((4, 2)), objective=nd.SteadyState(), estimator=estimator
        )
    with pytest.raises(ValueError, match=r"eqx.field\(static=True\)"):
        nd.relax(net, x)


def test_a_float_size_names_the_rule():
    with pytest.raises(ValueError, match=r"FloatSize.n_out = 2.0: .*Python ints in static fields"):
        nd.relax(FloatSize(6, 3, 2, key=jr.PRNGKey(0)), jnp.ones(3))


def test_init_state_of_the_wrong_shape_names_the_rule():
    net = WrongInitState(6, 3, 2, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match=r"init_state\(x\) returns shape \(1, 6\).*must return shape \(6,\)"):
        nd.relax(net, jnp.ones(3))
    with pytest.raises(ValueError, match=r"must return shape \(6,\)"):
        nd.rollout(net, jnp.ones((5, 3)), jnp.arange(1.0, 6.0))


def test_a_user_estimator_and_network_by_import_path():
    net = ndc.build_network({"kind": "test_user_network:TauRNN", "n": 6}, n_in=3, n_out=2, key=jr.PRNGKey(0))
    est = ndc.build_object({"kind": "test_user_network:OneStepRBP"}, "estimators.mine.", family="estimators")
    assert isinstance(net, TauRNN) and isinstance(est, OneStepRBP)
    xs, ys = jr.normal(jr.PRNGKey(1), (8, 3)), jr.normal(jr.PRNGKey(2), (8, 2))
    loss, g, info = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=est)
    _, exact, _ = nd.batch_value_and_grad(net, xs, ys, objective=nd.SteadyState(), estimator=nd.RBP())
    assert bool(info["converged"].all()) and jnp.isfinite(loss)
    # An approximation, but a descent direction: positively aligned with the exact gradient.
    flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])  # noqa: E731
    cos = flat(g) @ flat(exact) / (jnp.linalg.norm(flat(g)) * jnp.linalg.norm(flat(exact)))
    assert cos > 0.5
    _, g1, _ = nd.value_and_grad(net, xs[0], ys[0], objective=nd.SteadyState(), estimator=est)
    assert jax.tree.structure(g1) == jax.tree.structure(g)
