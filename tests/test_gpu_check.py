"""benchmarks/gpu_check.py runs with one command; on this CPU-only machine it says so and smoke-tests itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reference
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_without_cuda_says_so_and_writes_its_table(tmp_path, monkeypatch):
    pytest.importorskip("sam2.build_sam", reason="reference sam2==1.1.0 not installed")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: gpu_check.py would run the full check (minutes), not the smoke run")
    import gpu_check

    out = tmp_path / "check.md"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(out)])
    assert gpu_check.main() == 0
    text = out.read_text()
    assert "**No CUDA GPU here**" in text and "no GPU figure was measured" in text
    parity_row = next(line for line in text.splitlines() if line.startswith("| sam2.0 20 frames @128 |"))
    assert parity_row.endswith("| yes |")  # real parity numbers of the CPU run, within 1e-3
    speed_rows = [line for line in text.splitlines() if line.startswith("| sam2.1_hiera_t |")]
    assert [row.split(" | ")[1] for row in speed_rows] == ["1", "2"]
    assert all("not compiled" in row and "failed" not in row for row in speed_rows)
    population_rows = [line for line in text.splitlines() if line.startswith("| 256 x 256 |")]
    assert len(population_rows) == 1 and population_rows[0].split(" | ")[1] == "2"  # two cells seeded and tracked
