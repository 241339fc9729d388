import abc

import equinox as eqx


class AbstractAdjointSolve(eqx.Module):
    """A strategy for RBP's adjoint equation `J^T v = -(dl/dr*)^T` at the steady state.

    `solve(matvec, g, r)` gets `matvec(v) = J^T v` (one VJP of F, matrix-free), the loss
    gradient `g = (dl/dr*)^T` and the state (for strategies that need it, e.g. a dense
    Jacobian), and returns `(v, info)` with `info` holding `adjoint_converged`,
    `adjoint_steps` and `adjoint_residual` (`rms(J^T v + g) / rms(g)`).
    """

    @abc.abstractmethod
    def solve(self, matvec, g, jacobian, symmetric: bool, dt: float):
        """Returns `(v, info)` with `J^T v ~= -g`. `jacobian()` builds the dense J on demand;
        `symmetric` says the network declares `J = J^T` (energy networks); `dt` is the
        forward relaxation's step, a step the adjoint dynamics are stable with too (J^T
        has the eigenvalues of J)."""
