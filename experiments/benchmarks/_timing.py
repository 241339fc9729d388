"""Timing and memory measurement shared by the benchmark sections.

Every section times ours and the peer side by side, in one process, with the same
protocol: compile once (reported separately), then the median of `repeats` runs, each
synchronised with `jax.block_until_ready`.
"""

import statistics
import time

import jax


def device_name() -> str:
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}:{kind}"


def time_fn(fn, *args, repeats: int = 5, min_time: float = 0.0):
    """`(median_seconds, compile_seconds)` of `fn(*args)`; `fn` should be jitted.

    The first call (compilation plus one run) is timed separately. With `min_time`, each
    sample repeats the call until that much time has passed, for very short functions."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    samples = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            jax.block_until_ready(fn(*args))
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples), compile_s


def time_side_by_side(calls, repeats: int = 9, min_time: float = 0.05):
    """Seconds per call of each `(fn, *args)` in `calls`, measured side by side: each is
    compiled (and run once) first, then `repeats` rounds each take one sample of every call
    in turn (a sample repeats the call for at least `min_time`). The result is each call's
    best sample: on a machine shared with other processes, load only ever adds time, and the
    interleaving puts every call under the same conditions, so the ratios between them are
    what counts."""
    for fn, *args in calls:
        jax.block_until_ready(fn(*args))
    samples = [[] for _ in calls]
    for _ in range(repeats):
        for i, (fn, *args) in enumerate(calls):
            n = 0
            t0 = time.perf_counter()
            while True:
                jax.block_until_ready(fn(*args))
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_time:
                    break
            samples[i].append(elapsed / n)
    return [min(s) for s in samples]


def peak_bytes(fn, *args) -> int | None:
    """Peak memory XLA plans for `fn(*args)` (arguments + outputs + temporaries), in bytes:
    the figure that grows with stored trajectories; reported on CPU and GPU."""
    from neurodyn._misc import planned_peak_bytes

    return planned_peak_bytes(fn, *args)


def row(section: str, problem: str, ours: str, peer: str, ours_s: float, peer_s: float, target: str, **extra):
    """One tidy result row; `ratio = ours_s / peer_s` (below 1 means neurodyn is faster)."""
    return dict(
        section=section,
        problem=problem,
        ours=ours,
        peer=peer,
        ours_ms=1e3 * ours_s,
        peer_ms=1e3 * peer_s,
        ratio=ours_s / peer_s,
        target=target,
        device=device_name(),
        **extra,
    )
