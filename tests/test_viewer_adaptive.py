"""The viewer's adaptive resolution rule (viewer/server.py `adapt_scale`)."""

from __future__ import annotations

import pytest

from avatar.viewer.server import MIN_SCALE, adapt_scale


@pytest.mark.parametrize("full_cost_s", [0.05, 0.3, 1.0])
def test_scale_converges_to_target_frame_time(full_cost_s):
    """With render time ~ pixels (scale^2), the rule settles where a frame meets the target."""
    target = 0.1
    scale = 1.0
    for _ in range(30):
        scale = adapt_scale(scale, full_cost_s * scale ** 2 + 0.002, target)
    expected = min(1.0, max(MIN_SCALE, ((target - 0.002) / full_cost_s) ** 0.5))
    assert scale == pytest.approx(expected, rel=0.05)


def test_scale_is_clamped_and_recovers():
    assert adapt_scale(0.5, 100.0, 0.1) >= MIN_SCALE
    assert adapt_scale(MIN_SCALE, 100.0, 0.1) == MIN_SCALE
    assert adapt_scale(0.9, 0.001, 0.1) == 1.0  # a cheap frame goes back to full resolution
    assert adapt_scale(0.5, 0.1, 0.1) == pytest.approx(0.5)  # on target: unchanged
