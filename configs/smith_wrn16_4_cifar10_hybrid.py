"""WRN-16-4 on CIFAR-10, hybrid schedule: Smith et al. 2018 (arXiv 1711.00489, §5.1).

    mbx train --config configs/smith_wrn16_4_cifar10_hybrid.py

As configs/smith_wrn16_4_cifar10_increasing_batch.py, but the batch may not exceed 640: at
epoch 60 it grows 128 -> 640, at epochs 120 and 160 the LR is divided by 5 instead (what one
does when hardware caps the batch). Expected (Smith et al. Fig. 2): the same test accuracy
against epochs (about 94%) in ~34k parameter updates. Needs CIFAR-10 prepared and an
accelerator (see the base config).
"""
import pathlib

import mbx


def get_config() -> mbx.Config:
  return mbx.load_config(pathlib.Path(__file__).with_name('smith_wrn16_4_cifar10.py'), [
      'optim.schedule=constant', 'optim.milestones=()',
      'train.batch_size_milestones=(60, 120, 160)', 'train.batch_size_factor=5',
      'train.max_batch_size=640', 'name=smith_wrn16_4_cifar10_hybrid'])
