from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float

from .. import activations as _act
from .._custom_types import Info, Scalar
from .._dynamics import continue_step, relax_loop
from .._objectives import AbstractObjective, SteadyState
from .._options import IntegrationOptions
from .._outcome import flag_failure, RESULTS
from ..networks import AbstractEnergyNetwork, AbstractNetwork
from ._base import AbstractSurrogateEstimator, CheckedInput, CheckedTarget, Residuals


_VARIANTS = ("centered", "one-sided", "holomorphic")
# Activations that extend to holomorphic functions of a complex argument (near the real
# axis); everything else among `nd.activations` is piecewise (max, clip, where) and is not.
_HOLOMORPHIC = (_act.Identity, _act.Logistic, _act.Tanh, _act.Softplus)


class EP(AbstractSurrogateEstimator):
    r"""Equilibrium propagation: the gradient from how the steady state moves when the
    dynamics are nudged towards the target.

    **Sign convention** (the EP papers': Scellier & Bengio 2017, Laborieux et al. 2021).
    The nudged dynamics are the gradient flow of the total energy `E + beta l`,

    `dr/dt = F(r) - beta (dl/dr)^T`,

    so `beta > 0` pulls the state towards lower loss. (Written as `F + b (dl/dr)^T`, with the
    opposite sign of the nudge, `b` is our `-beta`.) Let
    `r^beta` be the nudged equilibrium and `J = dF/dr` at the free one `r^0 = r*`. Then

    `dr^beta/dbeta = J^-1 (dl/dr)^T` (in the other sign convention `dr*/db = -J^-1 (dl/dr)^T`),

    while the exact gradient is `dl/dw = -dl/dr J^-1 dF/dw` (plus the readout's direct
    term). When `J` is symmetric, `-dl/dr J^-1 = -(dr^beta/dbeta)^T`, so

    `dl/dw = -(dr^beta/dbeta)^T dF/dw + d l(readout(r*), y)/dw`   (`J = J^T`).

    EP estimates `dr^beta/dbeta` by a finite difference of nudged equilibria, each relaxed
    from the free equilibrium:

    - `variant="centered"`: phases `+beta` and `-beta`, bias O(beta^2) (Laborieux et al. 2021).
    - `variant="one-sided"`: the free phase and `+beta` (classic EP), bias O(beta).
    - `variant="holomorphic"`: `N = points` phases on a circle in the complex plane,
      bias O(beta^N) (Laborieux & Zenke 2022), below.

    **Holomorphic EP** (Laborieux & Zenke 2022, "Holomorphic equilibrium propagation computes
    exact gradients through finite size oscillations"). When `F` and the loss are holomorphic
    in `r` (and hence the nudged equilibrium `r^beta` in complex `beta`), Cauchy's formula
    gives the derivative at `beta = 0` exactly from values on a circle of ANY radius inside
    the disc where `r^beta` stays analytic:

    `d g(r^beta)/dbeta |_0 = 1/(2 pi i) oint g(r^b) / b^2 db`.

    With `N` equally spaced points `beta_k = beta e^{2 pi i k / N}`, `k = 0..N-1`, the
    trapezoidal rule on the circle is the first discrete Fourier coefficient:

    `dl/dw ~ Re sum_k c_k dE/dw(r^{beta_k})`,   `c_k = e^{-2 pi i k / N} / (N beta)`.

    Writing `g(b) = sum_n a_n b^n`, the sum returns `a_1 + a_{N+1} beta^N + a_{2N+1}
    beta^{2N} + ...`: the error is O(beta^N), so at a fixed, finite `beta` it vanishes
    geometrically as `N` grows. `N = 2` is the centered variant (`c = +-1/(2 beta)` at
    `+-beta`). The nudged relaxations run on COMPLEX states (`dr/dt = F(r) - beta_k
    (dl/dr)^T`, with the network's parameters, input and target cast to complex): a
    network's vector field is evaluated on complex arrays, so its activation must be
    holomorphic: `nd.activations.tanh`, `logistic`, `identity` and `softplus` are;
    ReLU-like and clipped activations (`relu`, `leaky_relu`, `elu`, `hard_tanh`,
    `hard_logistic`, `PReLU`, `Maxout`) are not, and are refused with a `ValueError` (a
    plain callable such as `jnp.tanh` is taken on trust). The loss must be holomorphic too
    (`squared_error` is; `softmax_cross_entropy` is, near the real axis). On a network
    without an energy the general formula below uses `delta = Re sum_k c_k r^{beta_k}`; it is
    biased when `J` is not symmetric, as for the other variants.

    On an energy network (`nd.networks.AbstractEnergyNetwork`, `F = -dE/dr`) the update is the
    classic one: `dl/dw ~ (dE/dw(r^beta) - dE/dw(r^-beta)) / (2 beta)` (centered) or
    `(dE/dw(r^beta) - dE/dw(r^0)) / beta` (one-sided), which needs no `dF/dw` and no Jacobian.
    On any other network it is the general formula (Scellier & Bengio 2019) `-((r^a - r^b)/(a - b))^T dF/dw(r*)` (one VJP
    of F), biased however small beta is when `J` is not symmetric: `info["asymmetry"]` then
    reports `||J - J^T||_F / ||J||_F`, estimated from random probes (one JVP and one VJP of F
    each, no dense `J`). Parameters of the readout get their direct gradient at `r*`.

    Cost: the free relaxation, then one (one-sided), two (centered) or `N` (holomorphic,
    complex arithmetic: about 4x a real step each) nudged relaxations from `r*`, run as one
    relaxation batched over the phases, each usually shorter than the free one; the
    parameter gradient is one reverse pass through `E` (or `F`) and the loss; in a
    batch (`nd.batch_value_and_grad`) the phases of all examples are the rows of one
    batch of energies, so each weight gradient is one matrix product over `2B` rows. Memory O(n)
    (O(Nn) for holomorphic).

    **Arguments:**

    - `beta`: the nudging strength, `> 0` (an array field: a sweep over beta compiles once).
    - `variant`: `"centered"` (default), `"one-sided"` or `"holomorphic"`.
    - `points`: the number `N >= 2` of phases on the circle, a static `int`, for
      `variant="holomorphic"` only (default 4 there; `None` for the other variants).
    - `asymmetry_probes`: random probes for `info["asymmetry"]`. `None` (default): 4 on
      general networks, where the bias it measures is real, and none on energy networks,
      where `J = -d^2E/dr^2` is symmetric by construction (the probes cost a JVP and a VJP
      of `F` per example, about 15% of a training step; measured on the Hopfield n = 256
      benchmark). Check a network you wrote yourself with `asymmetry_probes=1`: one probe
      `u` suffices to confirm symmetry (`(J - J^T) u = 0`; any asymmetry shows with
      probability 1). `0` skips the estimate (`info` then has no `"asymmetry"`).

    **Returns** (from `nd.value_and_grad`): `info` holds the free phase's `converged`,
    `steps`, `residual` and `result`, plus `forward_converged`, `nudged_converged`,
    `nudged_steps` (summed over the nudged phases) and `asymmetry`; `converged` is the AND
    of all phases, and `result` is the first failing phase's outcome.

    !!! warning

        The finite difference divides the relaxation error by beta: keep the relaxation
        tolerance (`rtol`, `atol`) well below beta times the size of `dl/dr`. The float64
        defaults (1e-10, 1e-12) do for beta >= 1e-5; the float32 ones (1e-5, 1e-6) leave an
        error of about `1e-5 / beta` (2e-4 at beta = 0.05), so float32 wants beta >= 0.01.
        On a network with a non-symmetric Jacobian the estimate is biased however small beta
        is (see `info["asymmetry"]`); use `nd.RBP()` there. A large beta may move the
        nudged state to another basin of attraction. Holomorphic EP is exact only inside the
        disc where the nudged equilibrium is analytic in `beta`: past it (a bifurcation, or
        a complex nudged relaxation that no longer converges, reported in `info`) a larger
        `N` does not help.
    """

    beta: Float[Array, "*sweep"]
    variant: Literal["centered", "one-sided", "holomorphic"] = eqx.field(static=True)
    asymmetry_probes: int | None = eqx.field(static=True)
    points: int | None = eqx.field(static=True)

    def __init__(
        self,
        beta: float | ArrayLike = 0.1,
        variant: Literal["centered", "one-sided", "holomorphic"] = "centered",
        asymmetry_probes: int | None = None,
        points: int | None = None,
    ):
        self.beta = jnp.asarray(beta, dtype=jnp.result_type(float))
        self.variant = variant
        self.asymmetry_probes = asymmetry_probes
        if points is None and variant == "holomorphic":
            points = 4
        # Checked before the assignment: a JAX array set as this static field would warn
        # before `__check_init__` could refuse it.
        _check_points(variant, points)
        self.points = points

    def __check_init__(self):
        if self.variant not in _VARIANTS:
            raise ValueError(
                f"EP variant must be 'centered' or 'one-sided', got {self.variant!r}, or "
                "'holomorphic' (with points=N). Use nd.EP(beta, variant='centered') for the "
                "O(beta^2) estimate, nd.EP(beta, variant='holomorphic', points=4) for O(beta^4)."
            )
        if self.asymmetry_probes is not None and (
            not isinstance(self.asymmetry_probes, int) or self.asymmetry_probes < 0
        ):
            raise ValueError(f"EP asymmetry_probes must be None or an integer >= 0, got {self.asymmetry_probes!r}.")
        if not isinstance(self.beta, jax.core.Tracer) and not bool(jnp.all(self.beta > 0)):
            raise ValueError(
                f"EP needs beta > 0, got beta={self.beta}. The sign of the nudge is fixed by "
                "the convention (beta > 0 pulls towards the target); the centered variant "
                "already uses -beta as its second phase."
            )

    objectives = (SteadyState,)

    def surrogate(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        residuals: Residuals,
    ) -> Scalar:
        states, weights, r_free = residuals
        if self.variant == "holomorphic":
            if isinstance(net, AbstractEnergyNetwork):
                # Re sum_k c_k E(r_k): the parameters enter through their complex copies,
                # whose cast back to the reals in the reverse pass keeps the real part.
                cnet, cx = _complexify(net), x.astype(states.dtype)
                terms = [weights[k] * cnet.energy(states[k], cx) for k in range(states.shape[0])]
                dynamics_term = jnp.real(sum(terms[1:], terms[0]))
            else:
                delta = jnp.real(weights @ states)
                dynamics_term = -jnp.vdot(delta, net(0.0, r_free, x))
            return objective.value(net, r_free, y) + dynamics_term
        if isinstance(net, AbstractEnergyNetwork):
            # Classic EP: sum_k weights_k E(r_k); its parameter gradient is the update. The
            # energies vmapped over the phases: in a batch (the surrogate vmapped over the
            # examples) every weight gradient is then ONE matrix product over the 2B rows
            # (two over B and a sum: 0.02-0.03 ms slower on Hopfield n = 256, B = 32; the
            # one-example path measured the same either way).
            dynamics_term = weights @ jax.vmap(net.energy, in_axes=(0, None))(states, x)
        else:
            # -delta^T dF/dw at r*, with delta ~ dr^beta/dbeta.
            dynamics_term = -jnp.vdot(weights @ states, net(0.0, r_free, x))
        return objective.value(net, r_free, y) + dynamics_term

    def solve(
        self,
        net: AbstractNetwork,
        x: CheckedInput,
        y: CheckedTarget,
        objective: AbstractObjective,
        options: IntegrationOptions,
    ) -> tuple[Scalar, Residuals, Info]:
        energy_net = isinstance(net, AbstractEnergyNetwork)
        if self.variant == "holomorphic":
            _check_holomorphic(net)
        r_free, info = relax_loop(net, x, net.init_state(x), options)
        beta = self.beta.astype(r_free.dtype)
        # The nudged phases start from r* at the step the free phase ended with.
        options = continue_step(options, info)

        def dl_dr(r):
            return jax.grad(lambda r: objective.value(net, r, y))(r)

        def nudged(b):
            # The gradient flow of E + b l: a pull towards lower loss for b > 0.
            return relax_loop(net, x, r_free, options, forcing=lambda r: -b * dl_dr(r))

        # Both centered phases run as one relaxation batched over the phase axis: one loop,
        # and each step's matrix products take two right-hand sides at once.
        if self.variant == "holomorphic":
            states, weights, ninfo = _holomorphic_phases(net, x, y, objective, options, r_free, beta, self.points)
        elif self.variant == "centered":
            phases = jnp.stack([beta, -beta])
            r_nudged, ninfo = jax.vmap(nudged)(phases)
            states, weights = r_nudged, jnp.stack([1 / (2 * beta), -1 / (2 * beta)])
        else:
            r_beta, ninfo = jax.vmap(nudged)(beta[None])
            states = jnp.concatenate([r_beta, r_free[None]])
            weights = jnp.stack([1 / beta, -1 / beta])

        loss = objective.value(net, r_free, y)
        residuals = (states, weights, r_free)

        probes = self.asymmetry_probes
        if probes is None:
            probes = 0 if energy_net else 4
        extra = {}
        if probes > 0:
            extra["asymmetry"] = _asymmetry(lambda r: net(0.0, r, x), r_free, probes)

        forward_ok = info["converged"]
        nudged_ok = jnp.all(ninfo["converged"])
        # The first failing nudged phase's outcome (its results are per phase).
        first_bad = jnp.argmin(ninfo["converged"])
        worst = jax.tree.map(lambda a: a[first_bad], ninfo["result"])
        nudged_result = RESULTS.where(nudged_ok, RESULTS.successful, worst)
        result = RESULTS.where(forward_ok, nudged_result, info["result"])
        info = dict(
            info,
            **extra,
            converged=forward_ok & nudged_ok,
            forward_converged=forward_ok,
            nudged_converged=nudged_ok,
            nudged_steps=jnp.sum(ninfo["steps"]),
            result=result,
        )
        # In a sweep beta is traced and __check_init__ cannot see it: an invalid one is data.
        info = flag_failure(info, (beta > 0) & jnp.isfinite(beta), RESULTS.invalid_parameter, override=True)
        return loss, residuals, info


def _check_points(variant, points):
    if variant not in _VARIANTS:
        return  # __check_init__ names the variant
    if variant == "holomorphic":
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ValueError(
                f"EP(variant='holomorphic') needs points = a Python int >= 2 (the number "
                f"of phases on the circle, static), got points={points!r}. points=2 is "
                "the centered variant; points=4 or more makes the bias O(beta^points)."
            )
    elif points is not None:
        raise ValueError(
            f"EP points={points!r} applies to variant='holomorphic' only (variant="
            f"{variant!r} has fixed phases). Use nd.EP(beta, variant='holomorphic', "
            f"points={points!r})."
        )


_COMPLEX = {jnp.dtype(jnp.float64): jnp.complex128}


def _complex_dtype(dtype):
    return jnp.dtype(_COMPLEX.get(jnp.dtype(dtype), jnp.complex64))


def _complexify(net):
    """`net` with its floating-point parameters cast to complex (integer leaves, such as
    sparse indices, kept): under strict dtype promotion a real weight cannot meet a complex
    state."""

    def cast(a):
        if eqx.is_inexact_array(a) and not jnp.iscomplexobj(a):
            return a.astype(_complex_dtype(a.dtype))
        return a

    return jax.tree.map(cast, net)


def _check_holomorphic(net):
    acts = [
        a
        for a in jax.tree.leaves(net, is_leaf=lambda a: isinstance(a, _act.AbstractActivation))
        if isinstance(a, _act.AbstractActivation)
    ]
    bad = sorted({type(a).__name__ for a in acts if not isinstance(a, _HOLOMORPHIC)})
    if bad:
        raise ValueError(
            f"nd.EP(variant='holomorphic') evaluates the network on complex states, which "
            f"needs a holomorphic activation; {type(net).__name__} uses {', '.join(bad)}, "
            "which is piecewise (not holomorphic). Use nd.activations.tanh, logistic, "
            "identity or softplus, or nd.EP(beta, variant='centered') with this network."
        )


class _ComplexNudged(AbstractNetwork):
    # The complex nudged dynamics `dz/dt = F(z) + forcing(z)` on the real state
    # `(Re z, Im z)` of length 2n, so that the relaxation, its solvers and its rms-norm
    # convergence test run unchanged on real arrays (the rms of the pair is that of |z|
    # over sqrt 2). `net` has complex parameters; never exported.
    net: AbstractNetwork
    forcing: Callable[[Array], Array]

    def __init__(self, net: AbstractNetwork, forcing: Callable[[Array], Array]):
        self.net = net
        self.forcing = forcing

    @property
    def n_state(self) -> int:
        return 2 * self.net.n_state

    @property
    def n_in(self) -> int:
        return self.net.n_in

    @property
    def n_out(self) -> int:
        return self.net.n_out

    def __call__(self, t, s, x):
        n = self.net.n_state
        z = jax.lax.complex(s[:n], s[n:])
        dz = self.net(t, z, x.astype(z.dtype)) + self.forcing(z)
        return jnp.concatenate([jnp.real(dz), jnp.imag(dz)])

    def init_state(self, x):
        r = self.net.init_state(x)
        return jnp.concatenate([jnp.real(r), jnp.imag(r)])

    def readout(self, s):
        n = self.net.n_state
        return self.net.readout(jax.lax.complex(s[:n], s[n:]))


def _holomorphic_phases(net, x, y, objective, options, r_free, beta, N):
    """The `N` complex nudged equilibria at `beta e^{2 pi i k/N}`, relaxed from `r*` as one
    relaxation batched over the phases; their Fourier weights `e^{-2 pi i k/N} / (N beta)`;
    the relaxations' info."""
    cdtype = _complex_dtype(r_free.dtype)
    cnet = _complexify(net)
    n = r_free.shape[0]
    angles = 2 * jnp.pi * jnp.arange(N, dtype=r_free.dtype) / N
    unit = jax.lax.complex(jnp.cos(angles), jnp.sin(angles))
    betas = beta.astype(cdtype) * unit
    weights = jnp.conj(unit) / (N * beta).astype(cdtype)
    yc = jnp.asarray(y)
    if jnp.issubdtype(yc.dtype, jnp.inexact):
        yc = yc.astype(cdtype)

    def dl_dz(z):
        # The holomorphic derivative (JAX's VJP is the transposed, not conjugated, JVP).
        return jax.grad(lambda z: objective.value(cnet, z, yc), holomorphic=True)(z)

    def nudged(b):
        wrapped = _ComplexNudged(cnet, lambda z: -b * dl_dz(z))
        s0 = jnp.concatenate([r_free, jnp.zeros_like(r_free)])
        return relax_loop(wrapped, x, s0, options)

    s, ninfo = jax.vmap(nudged)(betas)
    states = jax.lax.complex(s[:, :n], s[:, n:])
    return states, weights, ninfo


def _asymmetry(F_r, r, probes):
    """`||J - J^T||_F / ||J||_F` by Hutchinson probes: `E||A u||^2 = ||A||_F^2` for
    `u ~ N(0, I)`; one JVP and one VJP of F per probe, batched over the probes."""
    _, jvp = jax.linearize(F_r, r)
    _, vjp = jax.vjp(F_r, r)
    # A fixed key: the estimate is a diagnostic, and a fixed probe set keeps it deterministic.
    us = jr.normal(jr.PRNGKey(0), (probes,) + r.shape, r.dtype)
    Ju = jax.vmap(jvp)(us)
    JTu = jax.vmap(lambda u: vjp(u)[0])(us)
    num, den = jnp.sum((Ju - JTu) ** 2), jnp.sum(Ju**2)
    # A zero Jacobian (a dead network) is symmetric: report 0, not NaN.
    return jnp.where(den > 0, jnp.sqrt(num / jnp.where(den > 0, den, 1)), 0.0).astype(r.dtype)
