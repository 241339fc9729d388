from ._base import AbstractDenseSensitivity, jacobian_diagonal, scale_rows


class Diagonal(AbstractDenseSensitivity):
    r"""The diagonal, e-prop-like approximation: only `diag(J)` in the recursion,

    `dp/dt = diag(J(r)) p + dF/dw`,

    so each unit's sensitivities decay with its own leak and self-coupling, the
    eligibility traces of Bellec et al. 2020 (e-prop) and Murray 2019 (RFLO) for rate
    units. Starting from `p = 0` the kept entries are those of `dF/dw`: for a CTRNN one
    per parameter.

    Exact when `J` is diagonal; biased otherwise (every path through another unit is lost).

    Cost per step: time O(nm) for the update plus O(n cost(F)) for `diag(J)` (n JVPs;
    O(n^3) = O(nm) for a CTRNN), against O(n^2 m) for exact RTRL; memory O(nm) in this
    dense layout (only the entries of the pattern of `dF/dw` are ever non-zero).
    """

    def mask(self, immediate):
        del immediate
        return None

    def propagate(self, jvp, r, p):
        return scale_rows(jacobian_diagonal(jvp, r), p)
