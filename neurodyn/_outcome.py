"""Outcomes of the solves, reported in ``info["result"]`` (diffrax's RESULTS pattern)."""

import equinox as eqx


class RESULTS(eqx.Enumeration):
    """Why a relaxation, rollout or adjoint solve stopped. The value is the message."""

    successful = ""
    max_steps_reached = (
        "The relaxation reached `max_steps` before `||F(r)|| < atol + rtol ||r||`. "
        "Increase `max_steps`, loosen `rtol`/`atol`, or lower the network's gain."
    )
    nonfinite = (
        "The state became non-finite (inf or NaN): the dynamics diverged. Lower `dt0` "
        "or the network's gain."
    )
    adjoint_max_steps_reached = (
        "The adjoint solve did not reach its tolerance within its iteration budget."
    )
    unstable_equilibrium = (
        "The equilibrium is not stable: the adjoint iteration diverged or the leading "
        "eigenvalue of J = dF/dr has a non-negative real part."
    )
