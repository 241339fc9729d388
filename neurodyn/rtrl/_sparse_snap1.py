import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from ._base import AbstractFieldSensitivity, jacobian_diagonal


class SparseSnAp1(AbstractFieldSensitivity):
    r"""SnAp-1 (Menick et al. 2021) in its sparse layout, with its real memory: one
    sensitivity per parameter.

    When every parameter `w_j` acts immediately on one unit `u(j)` only (the pattern of
    `dF/dw`: for a CTRNN `W_ij`, `U_ij` and `b_i` feed unit `i`), SnAp-1 keeps exactly the
    entries `p_j = dr_{u(j)}/dw_j` and drops the rest of `J p` at every step:

    `dp_j/dt = J_{u(j) u(j)}(r) p_j + dF_{u(j)}/dw_j`,

    stored as leaves of the parameters' own shapes. The immediate term is ONE VJP of `F`
    with the cotangent `1` (each parameter's column of `dF/dw` has its single non-zero
    entry at `u(j)`, so the column sum is that entry), and `diag(J)` comes from `n` JVPs.
    The gradient through the state is `g_j = (dl/dr)_{u(j)} p_j`. Parameters that feed no
    unit (a readout) have `p_j = 0`. The gradient equals `nd.rtrl.SnAp1()`'s (the dense,
    masked layout) to rounding.

    The pattern `u` is read once per trace from `dF/dw` at random parameters, states and
    inputs (structural, not value-dependent), with three VJPs: for positive random weights
    `a_i`, `S_k = sum_i a_i i^k dF_i/dw_j` gives `u(j) = S_1 / S_0`, and
    `S_1^2 = S_0 S_2` (Cauchy-Schwarz equality) confirms that one unit only is fed.

    Cost per step: memory O(m + n^2) (`p`, `dF/dw` and the `n` JVPs of `diag(J)`; O(m)
    for a dense CTRNN, where `m ~ n^2`), against O(nm) for the dense layout; time
    O(m + n cost(F)) (O(n^3) for a dense CTRNN), against O(n^2 m).

    Biased wherever `J` is not diagonal (every path through another unit is lost); exact
    when it is. For a CTRNN it equals `nd.rtrl.Diagonal()`.

    !!! warning

        Only for networks whose parameters each feed one unit (CTRNN and other
        rate/current networks with unshared weights), with a structure known at trace
        time. A symmetric Hopfield `W_ij` feeds units `i` and `j`, and a sparse network
        whose connectivity indices are traced arrays hides its pattern: both are refused
        with a `ValueError`; use `nd.rtrl.SnAp1()` (the dense, masked layout) there.
    """

    def prepare(self, params, static, n, n_in, dtype):
        return _units(params, static, n, n_in, dtype)

    def zeros(self, params, n, aux):
        del n, aux
        return jtu.tree_map(jnp.zeros_like, params)

    def restart(self, p, aux):
        del aux
        return jtu.tree_map(jnp.zeros_like, p)

    def derivative(self, F_r, F_w, params, r, p, aux):
        dr, jvp = jax.linearize(F_r, r)
        d = jacobian_diagonal(jvp, r)
        _, vjp = jax.vjp(F_w, params)
        (immediate,) = vjp(jnp.ones_like(dr))
        dp = jtu.tree_map(lambda a, u, b: d[u].astype(a.dtype) * a + b, p, aux, immediate)
        return dr, dp

    def contract(self, p, g_r, aux):
        return jtu.tree_map(lambda a, u: g_r[u].astype(a.dtype) * a, p, aux)


def _units(params, static, n, n_in, dtype, who="nd.rtrl.SparseSnAp1()"):
    """For every parameter the unit it feeds (int32 leaves shaped like the parameters; 0
    for parameters that feed none, whose sensitivity stays 0), or a ValueError."""
    leaves, treedef = jtu.tree_flatten(params)
    paths = [jtu.keystr(path) for path, _ in jtu.tree_flatten_with_path(params)[0]]
    units = [np.full(leaf.shape, -1, np.int64) for leaf in leaves]
    with jax.ensure_compile_time_eval():
        key = jr.PRNGKey(0)
        for i in range(2):
            keys = jr.split(jr.fold_in(key, i), len(leaves) + 3)
            # Small values keep every unit off saturation: there a VJP is linear in its
            # cotangent only to a relative rounding of 1 / f'(z) (1e-2 at tanh'(z) ~ 1e-14).
            rand = [0.1 * jr.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys[3:], leaves)]
            rand = jtu.tree_unflatten(treedef, rand)
            r = 0.1 * jr.normal(keys[0], (n,), dtype)
            x = 0.1 * jr.normal(keys[1], (n_in,), dtype)
            a = jr.uniform(keys[2], (n,), dtype, 1.0, 2.0)
            try:
                _, vjp = jax.vjp(lambda p: eqx.combine(p, static)(0.0, r, x), rand)
                idx = jnp.arange(n, dtype=dtype)
                sums = [jtu.tree_leaves(vjp(a * idx**k)[0]) for k in range(3)]
                sums = [[np.asarray(s, np.float64) for s in ss] for ss in sums]
            except jax.errors.ConcretizationTypeError as e:
                raise _traced_error(who) from e
            except (TypeError, jax.errors.TracerArrayConversionError) as e:
                raise _traced_error(who) from e
            for j, (s0, s1, s2) in enumerate(zip(*sums)):
                scale = np.maximum(np.abs(s1) ** 2, np.abs(s0 * s2))
                tol = 1e-3 if np.dtype(dtype).itemsize < 8 else 1e-7
                fed = (s0 != 0) | (s1 != 0) | (s2 != 0)
                one = np.abs(s1**2 - s0 * s2) <= tol * scale
                u = np.where(s0 != 0, s1 / np.where(s0 != 0, s0, 1), -1.0)
                whole = np.abs(u - np.round(u)) < 1e-2
                u = np.round(u).astype(np.int64)
                clash = fed & (units[j] >= 0) & (units[j] != u)
                bad = fed & (~one | ~whole | (s0 == 0)) | clash
                if np.any(bad):
                    raise ValueError(
                        f"{who} keeps one sensitivity per parameter, for "
                        f"networks whose parameters each feed one unit immediately; in "
                        f"{type(eqx.combine(params, static)).__name__}, {int(np.sum(bad))} "
                        f"parameters of {paths[j]} feed several units (a symmetric "
                        "Hopfield W_ij feeds units i and j). Use nd.rtrl.SnAp1(), which "
                        "keeps their block of J in the dense layout, or nd.rtrl.Diagonal()."
                    )
                units[j] = np.where(fed, u, units[j])
    return jtu.tree_unflatten(treedef, [jnp.asarray(np.maximum(u, 0), jnp.int32) for u in units])


def _traced_error(who):
    return ValueError(
        f"{who} reads the pattern of dF/dw (which unit each parameter "
        "feeds) at trace time, but this network's structure is traced (integer leaves "
        "such as sparse connectivity indices, passed through jax.jit). Use "
        "nd.rtrl.SnAp1(), which reads the pattern inside the computation, or close "
        "over the network's integer leaves instead of passing them traced."
    )
