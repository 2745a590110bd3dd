"""The shared parity standard of tests/numerics.py accepts rounding and rejects real differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numerics import assert_same_computation


def test_rounding_and_values_near_zero_pass():
    a = np.array([[-5.0, 2e-4, 3.0], [np.inf, -1e-4, 0.5]], dtype=np.float32)
    b = a + np.float32(9e-4) * np.array([[1, -1, -1], [0, 1, 1]], dtype=np.float32)  # 2e-4 -> -7e-4: near 0
    assert_same_computation(a, b)
    assert_same_computation(torch.from_numpy(a).bfloat16(), torch.from_numpy(a).bfloat16())


@pytest.mark.parametrize("change, message", [
    (lambda a: a + 2e-3, "max |difference|"),
    (lambda a: np.where(np.isinf(a), np.nan, a), "NaN / inf"),
    (lambda a: a[:1], "shapes differ"),
])
def test_real_differences_fail(change, message):
    a = np.array([[-5.0, 2e-4, 3.0], [np.inf, -1e-4, 0.5]], dtype=np.float32)
    with pytest.raises(AssertionError, match=message):
        assert_same_computation(a, change(a), what="logits")

