"""The parity standard for tests that compare one computation done in two orders.

Batched against one by one, prefetched against not, folded against plain attention, compiled against
eager, worker threads against the calling thread, complex against real RoPE: float32 sums taken in
another order differ by rounding, and how much depends on the CPU's kernels (vector width, FMA, thread
split). Such tests therefore never assert bit-identity or a tight bound; they all use
:func:`assert_same_computation`, which holds on any CPU while still catching a real difference (a wrong
slot, a missed object, a different mask).

Tests of deterministically identical computations (the same code on the same inputs) may stay exact;
parity tests against Meta's reference keep their own bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PARITY_ATOL = 1e-3  # max |difference| of two orderings of the same float32 computation


def _as_array(values: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array, a (possibly bf16 / GPU) tensor or nested lists."""
    if hasattr(values, "detach"):  # a torch tensor; torch is imported only by the callers that need it
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def assert_same_computation(a: Any, b: Any, what: str = "values", atol: float = PARITY_ATOL) -> None:
    """Assert that ``a`` and ``b`` (arrays or tensors of one shape) are one computation in two orders.

    The standard: max |a - b| <= ``atol`` (1e-3), and the logits agree in sign wherever either of them is
    further than ``atol`` from zero, so masks (logit > 0) are the same except where a logit is within
    rounding of the threshold (values that close to 0 may flip without failing the test; with one
    tolerance for both, the bound implies the sign check, which states the masks' agreement). Non-finite
    values must match exactly, position by position. ``what`` names the compared quantity in the message.
    """
    x, y = _as_array(a), _as_array(b)
    assert x.shape == y.shape, f"{what}: shapes differ, {x.shape} vs {y.shape}"
    finite = np.isfinite(x) & np.isfinite(y)
    assert np.array_equal(x[~finite], y[~finite], equal_nan=True), f"{what}: NaN / inf at different places"
    if not finite.any():
        return
    diff = np.abs(x[finite] - y[finite])
    worst = float(diff.max())
    assert worst <= atol, f"{what}: max |difference| {worst:.3g} > {atol:g}"
    decided = np.maximum(np.abs(x[finite]), np.abs(y[finite])) > atol
    flipped = decided & ((x[finite] > 0) != (y[finite] > 0))
    assert not flipped.any(), (f"{what}: {int(flipped.sum())} values away from 0 (|value| > {atol:g}) "
                               "have opposite signs")
