"""Small instances of the network families of issue 8 (the recurrent families of Haykin 2009, ch. 15; the
layered Hopfield network of EP, sparse CTRNN and Hopfield) for the shared estimator suites.

`tests/helpers.py::small_networks` appends these, so every suite parametrised over it
(BPTT, RBP, RTRL, and the shared estimator suite) covers them. Every family is built with
its default, contracting `gain`, so each has a unique stable steady state and every
estimator applies; EP is exact only on the energy networks (`AbstractEnergyNetwork`).
"""

import jax.random as jr

import neurodyn as nd


def extra_networks(key):
    k = jr.split(key, 7)
    return [
        ("elman", nd.networks.Elman(5, 3, 2, key=k[0])),
        ("rmlp", nd.networks.RecurrentMLP((3, 4, 3, 2), key=k[1])),
        ("second-order", nd.networks.SecondOrder(4, 3, 2, key=k[2])),
        ("narx", nd.networks.NARX(3, 2, q=2, n_hidden=4, key=k[3])),
        ("ctrnn-sparse", nd.networks.CTRNN(8, 3, 2, density=0.3, key=k[4])),
        ("hopfield-sparse", nd.networks.Hopfield(3, 6, 2, density=0.4, key=k[5])),
        ("layered-hopfield", nd.networks.LayeredHopfield((3, 4, 3, 2), key=k[6])),
    ]
