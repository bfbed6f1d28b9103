"""MNIST-1D CNN with Adam to 85% validation accuracy, for adaptive batch-size studies.

    mbx study adaptive --config configs/adaptive_mnist1d_cnn.py
    mbx train --config configs/adaptive_mnist1d_cnn.py train.batch_policy=noise_scale

The critical-batch-size study's workload (configs/cbs_mnist1d_cnn.py): the target it measured
steps to (validation accuracy >= 0.85), Adam at a constant LR, B = 32 at lr 0.012 (its best LR
there, results/critical_batch_size/per_batch_size.csv), evaluations at geometric steps
(1.05^i) only, every run stopped at the target within 60 epochs. The study's ladder climbs
to train.max_batch_size = 2048; the policies decide at every log step (2048 examples), where
the noise scale B_simple is read. Expected: one run (B = 32) reaches the target in ~430 steps,
a few seconds on a 2-core CPU.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='adam', learning_rate=0.012),
      train=mbx.TrainConfig(
          batch_size=32, max_batch_size=2048, duration='60 epochs',
          log_every='2048 examples',     # also the policies' decisions
          eval_every='1000 epochs',      # i.e. never: geometric evaluations only (+ final)
          eval_growth=1.05, noise_scale=True, max_loss=10.0, checkpoint_every=None,
          keep_checkpoints=1, target_metric='eval_accuracy', target_value=0.85,
          stop_at_target=True),
      name='adaptive_mnist1d_cnn')
