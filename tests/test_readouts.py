"""Every network family's readout against its documented formula, written out here from the
network's fields (never against `readout` itself): a readout that silently changes form
(e.g. the current-form CTRNN's `V f(r) + c` becoming `V r + c`) fails here."""

import equinox as eqx
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest

import neurodyn as nd


def _with_random_floats(net, key):
    """All float leaves redrawn, so zero-initialised biases (`c`) take part in the formula."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(params)
    keys = jr.split(key, len(leaves))
    leaves = [jr.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return eqx.combine(jtu.tree_unflatten(treedef, leaves), static)


def _ctrnn_readout(net, r):
    W = dict(rate=r, current=np.tanh(r))[net.form]
    return np.asarray(net.V) @ W + np.asarray(net.c)


# (name, constructor, the readout written out from the fields: numpy, independent of the library)
CASES = [
    ("ctrnn-rate", lambda k: nd.networks.CTRNN(6, 3, 2, form="rate", key=k), _ctrnn_readout),
    ("ctrnn-current", lambda k: nd.networks.CTRNN(6, 3, 2, form="current", key=k), _ctrnn_readout),
    ("ctrnn-sparse-current", lambda k: nd.networks.CTRNN(8, 3, 2, form="current", density=0.3, key=k), _ctrnn_readout),
    ("hopfield", lambda k: nd.networks.Hopfield(3, 5, 2, key=k), lambda net, r: r[5:]),
    ("hopfield-sparse", lambda k: nd.networks.Hopfield(3, 6, 2, density=0.4, key=k), lambda net, r: r[6:]),
    ("layered", lambda k: nd.networks.Layered((3, 5, 4, 2), key=k), lambda net, r: r[9:]),
    ("layered-hopfield", lambda k: nd.networks.LayeredHopfield((3, 4, 3, 2), key=k), lambda net, r: r[7:]),
    ("elman", lambda k: nd.networks.Elman(5, 3, 2, key=k), lambda net, r: np.asarray(net.B) @ r),
    ("rmlp", lambda k: nd.networks.RecurrentMLP((3, 4, 3, 2), key=k), lambda net, r: np.asarray(net.V) @ r[4:]),
    (
        "second-order",
        lambda k: nd.networks.SecondOrder(4, 3, 2, key=k),
        lambda net, r: np.asarray(net.V) @ r + np.asarray(net.c),
    ),
    # NARX's state is (y_k, ..., y_{k-q+1}, past inputs): the readout is the newest output.
    ("narx", lambda k: nd.networks.NARX(3, 2, q=2, n_hidden=4, key=k), lambda net, r: r[:2]),
]


@pytest.mark.parametrize("name, make, formula", CASES, ids=[c[0] for c in CASES])
def test_readout_matches_its_formula(name, make, formula):
    k1, k2, k3 = jr.split(jr.PRNGKey(len(name)), 3)
    net = _with_random_floats(make(k1), k2)
    # States of size ~2, where tanh(r) and r differ clearly.
    r = 2 * jr.normal(k3, (net.n_state,))
    got = np.asarray(net.readout(r))
    want = formula(net, np.asarray(r))
    assert got.shape == (net.n_out,) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_every_family_has_a_readout_case():
    """A new family must add its formula above."""
    families = {
        obj
        for obj in vars(nd.networks).values()
        if isinstance(obj, type)
        and issubclass(obj, nd.networks.AbstractNetwork)
        and not obj.__name__.startswith("Abstract")
    }
    covered = {type(make(jr.PRNGKey(0))) for _, make, _ in CASES}
    assert families <= covered, f"no readout case for {sorted(f.__name__ for f in families - covered)}"
    forms = {make(jr.PRNGKey(0)).form for _, make, _ in CASES if isinstance(make(jr.PRNGKey(0)), nd.networks.CTRNN)}
    assert forms == {"rate", "current"}
