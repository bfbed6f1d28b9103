"""Tick labels that state the plotted numbers.

Matplotlib labels a nearly constant series relative to an offset ('1e-12 + 4.9999964e-3' for a
constant learning rate read back in float32 and float64), so it looks as if it changed.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

# A series that varies less than this, relative to its size, is constant up to rounding
# (float32's is ~6e-8).
CONSTANT_RTOL = 1e-6


def plain_ticks(fig: Figure) -> Figure:
  """`fig`, its linear axes labelled without an additive offset, and a y-axis whose data are
  constant up to rounding given the +-5% range matplotlib gives an exactly constant series."""
  for ax in fig.axes:
    for axis in (ax.xaxis, ax.yaxis):
      if isinstance(axis.get_major_formatter(), ScalarFormatter):
        axis.get_major_formatter().set_useOffset(False)
    if ax.get_yscale() == 'linear' and ax.get_autoscaley_on():
      low, high = ax.dataLim.intervaly
      size = max(abs(low), abs(high))
      if np.isfinite(size) and 0 < high - low <= CONSTANT_RTOL * size:
        middle = (low + high) / 2
        ax.set_ylim(middle - 0.05 * size, middle + 0.05 * size)
  return fig
