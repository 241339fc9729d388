"""The typed seams: every abstract method of the strategy families carries jaxtyping
annotations, and those annotations are real (checked at run time with
`jaxtyping.jaxtyped(typechecker=beartype.beartype)`: right shapes pass, wrong ones raise)."""

import abc
import inspect
import typing

import beartype
import diffrax
import jax.numpy as jnp
import jax.random as jr
import pytest
from jaxtyping import jaxtyped, TypeCheckError

import neurodyn as nd
from neurodyn._dynamics import _TERM
from neurodyn._options import steady_state_options
from neurodyn.estimators._base import (
    AbstractEstimator,
    AbstractGradientResidualEstimator,
    AbstractSurrogateEstimator,
)
from neurodyn.rtrl._base import (
    AbstractDenseSensitivity,
    AbstractFieldSensitivity,
    AbstractSensitivity,
    AbstractStochasticSensitivity,
)


# The abstract bases of the strategy families: a new abstract method on any of them must be
# annotated (parameters and return) for this file to pass.
BASES = [
    nd.networks.AbstractNetwork,
    nd.networks.AbstractEnergyNetwork,
    nd.relaxation.AbstractRelaxation,
    nd.relaxation.AbstractSteppingRelaxation,
    nd.adjoint.AbstractAdjointSolve,
    AbstractEstimator,
    AbstractSurrogateEstimator,
    AbstractGradientResidualEstimator,
    nd.AbstractObjective,
    nd.activations.AbstractActivation,
    nd.activations.AbstractParametricActivation,
    AbstractSensitivity,
    AbstractFieldSensitivity,
    AbstractDenseSensitivity,
    AbstractStochasticSensitivity,
    nd.AbstractIterativeSolver,
]

PUBLIC = [
    nd.relax,
    nd.rollout,
    nd.value_and_grad,
    nd.losses.squared_error,
    nd.losses.softmax_cross_entropy,
    nd.losses.l2_penalty,
    nd.activations.materialise,
    nd.iterate,
    nd.batch_mean,
    nd.data.double_moon,
    nd.data.digits,
    nd.data.mnist1d,
    nd.data.split,
    nd.data.sequences.adding_problem,
    nd.data.sequences.copy_task,
    nd.data.sequences.delayed_xor,
    nd.data.sequences.teacher_rnn,
    nd.fidelity.reference_gradient,
    nd.fidelity.compare,
    nd.fidelity.measure,
    nd.preprocessing.Preprocessor.fit,
    nd.preprocessing.Preprocessor.__call__,
]


def _abstract_methods(cls) -> dict[str, typing.Callable]:
    return {name: f for name, f in vars(cls).items() if getattr(f, "__isabstractmethod__", False)}


def missing_annotations(fn) -> list[str]:
    """The parameters (and `return`) of `fn` without an annotation; `self`/`cls` excepted.
    Also resolves the annotations, so a stale forward reference fails here too."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    typing.get_type_hints(fn)
    return missing


def test_every_base_declares_abstract_methods():
    # A base that lost its abstract methods would make the test below vacuous.
    for cls in BASES:
        if cls in (nd.relaxation.AbstractSteppingRelaxation, AbstractStochasticSensitivity):
            continue  # capability markers, asked with isinstance
        assert _abstract_methods(cls), cls.__name__
    assert "value" in _abstract_methods(nd.AbstractObjective)


@pytest.mark.parametrize("cls", BASES, ids=lambda c: c.__name__)
def test_abstract_methods_are_annotated(cls):
    for name, fn in _abstract_methods(cls).items():
        assert not missing_annotations(fn), f"{cls.__name__}.{name} lacks annotations: {missing_annotations(fn)}"


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__qualname__)
def test_public_functions_are_annotated(fn):
    assert not missing_annotations(fn), f"{fn.__name__} lacks annotations: {missing_annotations(fn)}"


def test_the_annotation_check_catches_an_unannotated_abstract_method():
    class Bad(nd.networks.AbstractNetwork):
        @abc.abstractmethod
        def extra(self, r, x: int): ...

    assert missing_annotations(_abstract_methods(Bad)["extra"]) == ["r", "return"]


# ---------------------------------------------------------------------------------------
# Run-time checks: the annotations constrain shapes and dtypes.
# ---------------------------------------------------------------------------------------


def checked(fn):
    return jaxtyped(typechecker=beartype.beartype)(fn)


def _networks():
    k = jr.PRNGKey(0)
    return [
        nd.networks.CTRNN(3, 2, 1, key=k),
        nd.networks.Elman(3, 2, 1, key=k),
        nd.networks.Hopfield(2, 3, 1, key=k),
        nd.networks.Layered((2, 3, 1), key=k),
        nd.networks.LayeredHopfield((2, 3, 1), key=k),
        nd.networks.NARX(2, 1, q=2, n_hidden=3, key=k),
        nd.networks.RecurrentMLP((2, 3, 1), key=k),
        nd.networks.SecondOrder(3, 2, 1, key=k),
    ]


def test_every_built_in_network_is_listed():
    listed = {type(net) for net in _networks()}
    exported = {
        c
        for c in vars(nd.networks).values()
        if isinstance(c, type) and issubclass(c, nd.networks.AbstractNetwork) and not inspect.isabstract(c)
    }
    assert exported <= listed, exported - listed


@pytest.mark.parametrize("net", _networks(), ids=lambda n: type(n).__name__)
def test_network_methods_are_checked_against_the_seam(net):
    cls = type(net)
    base = nd.networks.AbstractEnergyNetwork if isinstance(net, nd.networks.AbstractEnergyNetwork) else None
    names = ["__call__", "init_state", "readout"] + (["energy"] if base else [])
    for name in names:
        # The implementation carries the seam's own types, so checking it checks the seam.
        want = typing.get_type_hints(getattr(nd.networks.AbstractEnergyNetwork, name))
        assert typing.get_type_hints(getattr(cls, name)) == want, f"{cls.__name__}.{name}"

    x = jnp.linspace(-0.5, 0.5, net.n_in)
    r = checked(cls.init_state)(net, x)
    assert r.shape == (net.n_state,)
    for t in (0.0, jnp.asarray(0.5)):
        assert checked(cls.__call__)(net, t, r, x).shape == (net.n_state,)
    assert checked(cls.readout)(net, r).shape == (net.n_out,)
    if base:
        assert checked(cls.energy)(net, r, x).shape == ()

    with pytest.raises(TypeCheckError):
        checked(cls.__call__)(net, 0.0, r[:, None], x)  # a column, not a vector
    with pytest.raises(TypeCheckError):
        checked(cls.__call__)(net, 0.0, r.astype(jnp.int32), x)  # not inexact
    with pytest.raises(TypeCheckError):
        checked(cls.__call__)(net, jnp.zeros(2), r, x)  # a time is a scalar
    with pytest.raises(TypeCheckError):
        checked(cls.readout)(net, jnp.stack([r, r]))


def test_activations_keep_the_shape():
    z = jnp.linspace(-1.0, 1.0, 4)
    for act in (nd.activations.tanh, nd.activations.relu, nd.activations.softplus):
        assert checked(type(act).__call__)(act, z).shape == z.shape
        assert checked(type(act).__call__)(act, z.astype(jnp.complex128)).dtype == jnp.complex128
        with pytest.raises(TypeCheckError):
            checked(type(act).__call__)(act, jnp.arange(4))  # integers


@pytest.fixture(scope="module")
def net():
    return nd.networks.CTRNN(3, 2, 1, key=jr.PRNGKey(1))


def test_relax_is_checked(net):
    x = jnp.array([0.3, -0.2])
    r, info = checked(nd.relax)(net, x)
    assert r.shape == (3,) and bool(info["converged"])
    with pytest.raises(TypeCheckError):
        checked(nd.relax)(net, x[None])  # batched: nd.relax takes one example
    with pytest.raises(TypeCheckError):
        checked(nd.relax)(net, x.astype(jnp.complex128))


def test_rollout_is_checked(net):
    xs, ts = jnp.ones((2, 2)), jnp.array([1.0, 2.0])
    ys, _ = checked(nd.rollout)(net, xs, ts, solver=diffrax.Euler(), dt0=1.0)
    assert ys.shape == (2, 1)
    with pytest.raises(TypeCheckError):
        checked(nd.rollout)(net, xs, jnp.array([1.0, 2.0, 3.0]), solver=diffrax.Euler(), dt0=1.0)  # T differs


def test_value_and_grad_is_checked(net):
    x, y = jnp.array([0.3, -0.2]), jnp.array([0.1])
    objective = nd.SteadyState(nd.losses.squared_error)
    loss, grads, _ = checked(nd.value_and_grad)(net, x, y, objective=objective, estimator=nd.RBP())
    assert loss.shape == () and grads.W.shape == (3, 3)
    with pytest.raises(TypeCheckError):
        checked(nd.value_and_grad)(net, x.astype(jnp.complex128), y, objective=objective, estimator=nd.RBP())


def test_losses_are_checked():
    p, y = jnp.array([0.2, 0.8]), jnp.array([0.0, 1.0])
    assert checked(nd.losses.squared_error)(p, y).shape == ()
    with pytest.raises(TypeCheckError):
        checked(nd.losses.squared_error)(p, jnp.ones(3))  # k differs


def _implementations(module, base):
    return [
        c for c in vars(module).values() if isinstance(c, type) and issubclass(c, base) and not inspect.isabstract(c)
    ]


@pytest.mark.parametrize(
    "module,base,name",
    [
        (nd.relaxation, nd.relaxation.AbstractRelaxation, "relax"),
        (nd.adjoint, nd.adjoint.AbstractAdjointSolve, "solve"),
    ],
    ids=["relaxation", "adjoint"],
)
def test_strategies_carry_the_seam_types(module, base, name):
    # Runtime-checking an implementation then checks the seam (as for the networks).
    impls = _implementations(module, base)
    assert impls
    want = typing.get_type_hints(getattr(base, name))
    for cls in impls:
        assert typing.get_type_hints(getattr(cls, name)) == want, f"{cls.__name__}.{name}"


def test_relaxation_is_checked(net):
    x = jnp.array([0.3, -0.2])
    r0, opts = net.init_state(x), steady_state_options(jnp.float64)
    relaxation = nd.relaxation.FixedStep()
    relax = checked(type(relaxation).relax)
    sol = relax(relaxation, _TERM, (net, x), r0, opts, kind="lax", checkpoints=None)
    assert sol.value.shape == r0.shape
    with pytest.raises(TypeCheckError):
        relax(relaxation, _TERM, (net, x), r0[None], opts, kind="lax", checkpoints=None)
    with pytest.raises(TypeCheckError):
        relax(relaxation, _TERM, (net, x), r0, opts, kind="scan", checkpoints=None)  # not a loop kind


def test_adjoint_solve_is_checked():
    A = -2.0 * jnp.eye(3) + 0.1 * jnp.ones((3, 3))
    g = jnp.array([1.0, -1.0, 0.5])
    adjoint = nd.adjoint.DenseLU()
    solve = checked(type(adjoint).solve)
    sol = solve(adjoint, lambda v: A.T @ v, g, lambda: A, False, 1.0)
    assert sol.value.shape == (3,)
    with pytest.raises(TypeCheckError):
        solve(adjoint, lambda v: A.T @ v, g[:, None], lambda: A, False, 1.0)
    with pytest.raises(TypeCheckError):
        solve(adjoint, lambda v: A.T @ v, g, lambda: A, jnp.asarray(False), 1.0)  # a Python bool: static
