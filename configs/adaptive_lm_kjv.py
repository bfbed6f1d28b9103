"""Character Transformer on the KJV with AdamW to 1.75 nats validation loss, for adaptive
batch-size studies.

    mbx study adaptive --config configs/adaptive_lm_kjv.py study.lr_scaling_power=0.25

The critical-batch-size LM study's workload (configs/cbs_lm_kjv.py): 2 layers × 64 wide, 4
heads, windows of 32 characters; its target (validation loss <= 1.75 nats per character);
AdamW at a constant LR, B = 16 windows at lr 0.0028 (its best LR there,
results/critical_batch_size_lm/per_batch_size.csv), evaluations at geometric steps (1.05^i)
only, every run stopped at the target within 40,000 windows. The ladder climbs to
train.max_batch_size = 256; decisions every 2048 windows. Expected: one run (B = 16) reaches
the target in ~760 steps, about a minute on a 2-core CPU.
"""
import mbx

SEQ_LEN = 32


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='kjv', options={'seq_len': SEQ_LEN, 'tokenizer': 'char',
                                               'fractions': [0.98, 0.0025, 0.0175]},
                          eval_split='validation'),
      model=mbx.ModelConfig(name='transformer',
                            options={'num_layers': 2, 'width': 64, 'num_heads': 4,
                                     'max_len': SEQ_LEN, 'dropout': 0.0,
                                     'positions': 'learned'}),
      optim=mbx.OptimConfig(name='adamw', learning_rate=0.0028, b2=0.99, weight_decay=0.1),
      train=mbx.TrainConfig(
          batch_size=16, max_batch_size=256, duration='40000 examples',
          log_every='2048 examples',     # also the policies' decisions
          eval_every='1000 epochs',      # i.e. never: geometric evaluations only (+ final)
          eval_growth=1.05, eval_batch_size=512, noise_scale=True, max_loss=10.0,
          checkpoint_every=None, keep_checkpoints=1, target_metric='eval_loss',
          target_value=1.75, stop_at_target=True),
      name='adaptive_lm_kjv')
