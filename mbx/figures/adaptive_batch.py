"""Figures of adaptive batch-size runs (train.batch_policy): what each policy decided.

One column of panels per quantity against examples seen: the batch size, the learning rate,
and the statistic the decisions read (B_simple; AdaScale's gain where the LR rule uses it).
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from mbx.figures.ticks import plain_ticks  # pylint: disable=wrong-import-position


def decisions(runs: Mapping[str, object], path: str | pathlib.Path) -> pathlib.Path:
  """Writes B, LR, B_simple and the AdaScale gain against examples seen, one line per run.

  runs: label -> mbx.Run (its train_metrics hold the decision columns of the loop's log).
  """
  # A row's batch_size and learning_rate are over the interval that ends at it; its decision
  # columns hold for the interval that starts there.
  panels = (('batch_size', 'batch size B', True, 'pre'),
            ('learning_rate', 'learning rate', True, 'pre'),
            ('policy_b_simple', 'B_simple (decision input)', True, 'post'),
            ('adascale_gain', 'AdaScale gain r', False, 'post'))
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
  for index, (label, run) in enumerate(runs.items()):
    rows = run.train_metrics
    for ax, (column, title, log, where) in zip(axes, panels):
      if column not in rows:  # one colour per run in every panel, whichever it appears in
        continue
      ax.step(rows['examples_seen'], rows[column], where=where, label=label, lw=1.2,
              color=f'C{index % 10}')
      ax.set_title(title)
      ax.set_xlabel('examples seen')
      if log:
        ax.set_yscale('log')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  plain_ticks(fig).savefig(path, dpi=120)
  plt.close(fig)
  return path
