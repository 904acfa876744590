"""benchmarks/cores.py's projection: Amdahl's law fitted to measured speed-ups."""

from __future__ import annotations

import pytest

from benchmarks.cores import amdahl_serial_share, projected_speedup


@pytest.mark.parametrize("serial", [0.0, 0.1, 0.35, 1.0])
def test_the_fit_recovers_the_serial_share_of_exact_amdahl_speedups(serial):
    cores = [2, 4, 8]
    speedups = [projected_speedup(serial, k) for k in cores]
    assert amdahl_serial_share(cores, speedups) == pytest.approx(serial, abs=1e-9)


def test_one_ratio_gives_the_closed_form_and_a_projection():
    # 1.8x on 2 cores: 1/1.8 = s + (1 - s)/2  ->  s = 2/1.8 - 1 = 0.111...
    share = amdahl_serial_share([2], [1.8])
    assert share == pytest.approx(2 / 1.8 - 1)
    assert projected_speedup(share, 16) == pytest.approx(1 / (share + (1 - share) / 16))
    assert 5.0 < projected_speedup(share, 16) < 6.5


def test_superlinear_or_slower_measurements_are_clipped_to_a_valid_share():
    assert amdahl_serial_share([2], [2.5]) == 0.0  # faster than linear: no serial part
    assert amdahl_serial_share([2], [0.5]) == 1.0  # slower on 2 cores: all serial
