"""WRN-16-4 on CIFAR-10, decaying LR: the baseline of Smith et al. 2018 (arXiv 1711.00489, §5.1).

    mbx train --config configs/smith_wrn16_4_cifar10.py                  # decaying LR (this file)
    mbx train --config configs/smith_wrn16_4_cifar10_hybrid.py           # B x5 once, then LR / 5
    mbx train --config configs/smith_wrn16_4_cifar10_increasing_batch.py # B x5 at every milestone

The original training schedule: momentum SGD (0.9), batch 128, LR 0.1 divided by 5 at epochs
60, 120 and 160 of 200, weight decay 5e-4, the standard CIFAR crop + flip augmentation, and
ghost batch norm over 128 examples so that BN noise does not change with the batch size.
The three schedules reduce the SGD noise scale g = LR * N / (B (1 - m)) at the same epochs.

Expected (Smith et al. Fig. 2): the three test-accuracy curves coincide against epochs (about
94% at the end); against parameter updates, decaying LR takes ~78k updates, hybrid ~34k and
increasing batch ~29k. Needs CIFAR-10 prepared in the data dir
(`tfds build cifar10 --file_format array_record`) and an accelerator: 200 epochs of WRN-16-4
are hours on one GPU and out of reach on a CPU. Micro-batches of at most 1024 (multiples of
the ghost batch) keep the batch of 16000 within one GPU's memory. On several devices ghost BN
needs >= 128 examples per device; with fewer, use model.options.norm=batch
train.micro_batch_size=128 (global BN over each micro-batch of 128 is the same statistic).
"""
import mbx

MILESTONES = (60.0, 120.0, 160.0)


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='cifar10'),
      model=mbx.ModelConfig(name='wrn16_4', options={'depth': 16, 'width': 4, 'norm': 'ghost',
                                                     'ghost_batch_size': 128}),
      optim=mbx.OptimConfig(name='momentum', learning_rate=0.1, momentum=0.9,
                            weight_decay=5e-4, schedule='step', milestones=MILESTONES,
                            milestone_unit='epochs', decay_factor=0.2),
      train=mbx.TrainConfig(batch_size=128, max_device_batch_size=1024, duration='200 epochs',
                            log_every='1 epochs', eval_every='2 epochs',
                            checkpoint_every='10 epochs'),
      name='smith_wrn16_4_cifar10',
  )
