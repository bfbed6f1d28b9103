"""Critical batch size of a small character-level Transformer on the King James Bible.

    mbx sweep --config configs/cbs_lm_kjv.py                 # -> sweeps/cbs_lm_kjv/
    mbx analyze cbs sweeps/cbs_lm_kjv                        # tables + figures
    python experiments/critical_batch_size_lm.py             # the whole study (mbx study cbs)

Shallue et al. 2019-style study on a language model: 7 batch sizes B = 4 ... 256 windows of
32 characters (128 to 8,192 tokens per step) x 4 learning rates x 2 seeds = 56 trials of
AdamW at a constant LR (no warmup or decay, so the search is over the LR alone), each
stopped when the validation loss reaches the target. The model is deliberately tiny (2
layers x 64 wide, 4 heads, ~110 k parameters) so the whole study fits in ~30 minutes on a
2-core CPU; its critical batch size is a property of this model, data and target only.

Target: validation loss <= 1.75 nats per character (2.52 bits). In a pilot (B = 16 and 128,
LR 2e-3 / 4e-3 / 8e-3, 3,000 and 800 steps) the loss fell through 1.75 at ~850 steps at
B = 16 and ~270 at B = 128, still falling (1.53 and 1.49 at the end), so the target lies in
the middle of training, not at its end.

Learning rates: 4 points a factor of 2 apart, 7e-4 ... 5.6e-3 at B = 16, moving as B^0.25
(the pilot's best LR barely moved between B = 16 and 128: 2e-3 and 4e-3 were within
0.01 nats of each other at both); the README flags a best LR at the edge of its range.

Budgets: steps(B) = 2 (S_MIN + E_MIN / B), twice the pilot's two-point estimate of S(B)
(S_MIN ~ 190 steps, E_MIN ~ 10,600 windows): 5,680 steps at B = 4, 460 at B = 256. A trial
that has not reached the target by then is 'not reached'; it would not be the best LR.

Batches up to 64 pack their 8 trials into one program (results/bench_packed.md: packing
pays on XLA:CPU at small batch only); larger ones run one trial at a time.
"""
import math

import mbx
from mbx.sweep import SearchSpace, SweepConfig

SEQ_LEN = 32
S_MIN, E_MIN = 190, 10_600   # pilot estimates, in steps and windows
BATCH_SIZES = (4, 8, 16, 32, 64, 128, 256)


def budget(batch_size: int) -> str:
  return f'{math.ceil(2 * (S_MIN + E_MIN / batch_size))} steps'


def get_sweep() -> SweepConfig:
  base = mbx.Config(
      data=mbx.DataConfig(name='kjv', options={'seq_len': SEQ_LEN, 'tokenizer': 'char',
                                               'fractions': [0.98, 0.0025, 0.0175]},
                          eval_split='validation'),
      model=mbx.ModelConfig(name='transformer',
                            options={'num_layers': 2, 'width': 64, 'num_heads': 4,
                                     'max_len': SEQ_LEN, 'dropout': 0.0,
                                     'positions': 'learned'}),
      optim=mbx.OptimConfig(name='adamw', b2=0.99, weight_decay=0.1),
      train=mbx.TrainConfig(
          log_every='8192 examples',     # divergence checks; B_simple rows
          eval_every='1000 epochs',      # i.e. never: geometric evaluations only (+ final)
          eval_batch_size=512,
          checkpoint_every=None, keep_checkpoints=1,
          max_loss=10.0),                # cross-entropy starts at ln 63 = 4.1
      name='cbs_lm_kjv')
  search = (SearchSpace('adamw', learning_rate=(7e-4, 5.6e-3), num_learning_rates=4,
                        sampling='grid', lr_scaling_power=0.25, reference_batch_size=16),)
  return SweepConfig(
      base=base, search=search, batch_sizes=BATCH_SIZES, seeds=(0, 1),
      budget=budget(BATCH_SIZES[0]), budgets={b: budget(b) for b in BATCH_SIZES},
      target_metric='eval_loss', target_value=1.75, stop_at_target=True,
      eval_growth=1.1, noise_scale=True, pack=True, pack_max_batch_size=64,
      name='cbs_lm_kjv')
