"""Small instances of the seed-004 network families for the shared estimator suites."""

import jax.random as jr

import neurodyn as nd


def extra_networks(key):
    k = jr.split(key, 4)
    return [
        ("elman", nd.networks.Elman(5, 3, 2, key=k[0])),
        ("rmlp", nd.networks.RecurrentMLP((3, 4, 3, 2), key=k[1])),
        ("second-order", nd.networks.SecondOrder(4, 3, 2, key=k[2])),
        ("narx", nd.networks.NARX(3, 2, q=2, n_hidden=4, key=k[3])),
    ]
