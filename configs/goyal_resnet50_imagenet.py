"""ResNet-50 on ImageNet, batch 8192, linear scaling + warmup: Goyal et al. 2017 (arXiv 1706.02677).

    mbx train --config configs/goyal_resnet50_imagenet.py
    mbx train --config configs/goyal_resnet50_imagenet.py train.batch_size=256 \\
        optim.warmup='0 epochs'                                # the paper's small-batch baseline

The paper's recipe: momentum SGD (0.9), LR 0.1 per 256 examples scaled linearly with the
batch (3.2 at 8192), gradual warmup over 5 epochs from 0.1 to 3.2, then x0.1 at epochs 30,
60 and 80 of 90; weight decay 1e-4, not applied to BN parameters or biases; the last BN
scale of every residual block initialised to zero; BN statistics over 32 examples (the
paper's per-GPU batch, here ghost BN over 32). warmup_start_factor is 256 / 8192: change it
with train.batch_size so the warmup still starts from 0.1.

Expected (Goyal et al. Table 2 / Fig. 1): top-1 error 23.74% +- 0.09 at batch 8192 against
23.60% +- 0.12 at 256, with matching training curves after the first epochs. Needs ImageNet
prepared in the data dir (`tfds build imagenet2012 --file_format array_record` with the
archives downloaded by hand) and accelerators: the paper used 256 GPUs for one hour; on
one GPU micro-batches of 256 accumulate the batch of 8192 (32 per step).
"""
import mbx

BATCH_SIZE = 8192
BASE_BATCH_SIZE = 256


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='imagenet2012'),
      model=mbx.ModelConfig(name='resnet50', options={'zero_init_residual': True,
                                                      'norm': 'ghost', 'ghost_batch_size': 32}),
      optim=mbx.OptimConfig(name='momentum', learning_rate=0.1, lr_scaling='linear',
                            base_batch_size=BASE_BATCH_SIZE, momentum=0.9, weight_decay=1e-4,
                            schedule='step', milestones=(30.0, 60.0, 80.0),
                            milestone_unit='epochs', decay_factor=0.1, warmup='5 epochs',
                            warmup_start_factor=BASE_BATCH_SIZE / BATCH_SIZE),
      train=mbx.TrainConfig(batch_size=BATCH_SIZE, max_device_batch_size=256,
                            duration='90 epochs', log_every='50 steps', eval_every='1 epochs',
                            checkpoint_every='1 epochs', keep_checkpoints=3),
      name='goyal_resnet50_imagenet',
  )
