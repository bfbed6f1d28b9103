"""MNIST-1D CNN with momentum SGD and Smith et al.'s decaying-LR schedule (arXiv 1711.00489).

    mbx train --config configs/mnist1d_cnn_momentum.py
    mbx train --config configs/mnist1d_cnn_momentum.py optim.schedule=constant \\
        'optim.milestones=()' 'train.batch_size_milestones=(60, 120, 160)' \\
        train.batch_size_factor=5 train.max_batch_size=4000     # increase the batch instead

The CNN of configs/mnist1d_cnn.py trained as Smith et al. train WRN-16-4: momentum 0.9, LR 0.1,
batch 100, the LR divided by 5 at epochs 60, 120 and 160 of 200; no weight decay. The base of
experiments/increase_batch_size.py and experiments/large_batch_scaling.py, which override the
schedule, batch size and optimizer. Expected: 95.5% ± 0.5 test accuracy (5 seeds,
results/increase_batch_size/), 8000 updates, 11-14 s of training on a 2-core CPU.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='momentum', learning_rate=0.1, momentum=0.9, weight_decay=0.0,
                            schedule='step', milestones=(60.0, 120.0, 160.0),
                            milestone_unit='epochs', decay_factor=0.2),
      train=mbx.TrainConfig(batch_size=100, duration='200 epochs', log_every='1 epochs',
                            eval_every='2 epochs', checkpoint_every=None),
  )
