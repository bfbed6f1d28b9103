"""Does Muon move the critical batch size of the KJV language model? AdamW against Muon.

    python experiments/optimizer_cbs.py --part kjv          # mbx study cbs on this sweep

configs/cbs_lm_kjv.py's protocol (the same base config, target validation loss 1.75 nats per
character, constant LR, each trial stopped at the target, 4 learning rates a factor of 2
apart moving as B^0.25, 2 seeds, the same budgets) on the 5 batch sizes B = 16 ... 256 that
bracket its B_crit of ~63 (B = 4 and 8 cost most and only confirm perfect scaling). AdamW's
trials are that study's trials. Muon runs with consistent_rms = 0.2 (each orthogonalised update
scaled to AdamW's typical RMS, Liu et al. 2025) on AdamW's LR grid grown by two points above
(its best LR sat at the top of AdamW's at every B in the first run); the
embedding and the output head are trained by Muon's Adam part, as its authors do, and Muon's
matrices get the same decoupled weight decay 0.1.
"""
import dataclasses
import pathlib

from mbx.sweep import SearchSpace, load_sweep

BATCH_SIZES = (16, 32, 64, 128, 256)


def get_sweep():
  sweep = load_sweep(pathlib.Path(__file__).with_name('cbs_lm_kjv.py'))
  adamw = sweep.search[0]
  # AdamW's grid, grown by two points above: Muon's best LR sat at its top at every B.
  low, high = adamw.learning_rate
  muon = dataclasses.replace(adamw, optimizer='muon', learning_rate=(low, high * 4),
                             num_learning_rates=adamw.num_learning_rates + 2,
                             options={'consistent_rms': 0.2, 'weight_decay': 0.1})
  return dataclasses.replace(sweep, search=(adamw, muon), batch_sizes=BATCH_SIZES,
                             budgets={b: sweep.budgets[b] for b in BATCH_SIZES})
