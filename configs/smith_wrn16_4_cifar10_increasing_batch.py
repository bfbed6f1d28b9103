"""WRN-16-4 on CIFAR-10, increasing batch size: Smith et al. 2018 (arXiv 1711.00489, §5.1).

    mbx train --config configs/smith_wrn16_4_cifar10_increasing_batch.py

configs/smith_wrn16_4_cifar10.py with the LR held at 0.1 and the batch multiplied by 5 at
epochs 60, 120 and 160 instead: 128 -> 640 -> 3200 -> 16000, the same noise scale g as the
decaying-LR schedule at every epoch. Expected (Smith et al. Fig. 2): the decaying-LR test
accuracy curve against epochs (about 94%) in ~29k parameter updates instead of ~78k. Needs
CIFAR-10 prepared and an accelerator (see the base config).
"""
import pathlib

import mbx


def get_config() -> mbx.Config:
  return mbx.load_config(pathlib.Path(__file__).with_name('smith_wrn16_4_cifar10.py'), [
      'optim.schedule=constant', 'optim.milestones=()',
      'train.batch_size_milestones=(60, 120, 160)', 'train.batch_size_factor=5',
      'name=smith_wrn16_4_cifar10_increasing_batch'])
