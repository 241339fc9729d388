"""Small instances of the seed-004 network families for the shared estimator suites."""

import jax.random as jr

import neurodyn as nd


def extra_networks(key):
    k = jr.split(key, 6)
    return [
        ("elman", nd.networks.Elman(5, 3, 2, key=k[0])),
        ("rmlp", nd.networks.RecurrentMLP((3, 4, 3, 2), key=k[1])),
        ("second-order", nd.networks.SecondOrder(4, 3, 2, key=k[2])),
        ("narx", nd.networks.NARX(3, 2, q=2, n_hidden=4, key=k[3])),
        ("ctrnn-sparse", nd.networks.CTRNN(8, 3, 2, density=0.3, key=k[4])),
        ("hopfield-sparse", nd.networks.Hopfield(3, 6, 2, density=0.4, key=k[5])),
    ]
