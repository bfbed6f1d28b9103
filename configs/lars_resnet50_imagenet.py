"""ResNet-50 on ImageNet at batch 32768 with LARS: You, Gitman & Ginsburg 2017 (arXiv 1708.03888).

    mbx train --config configs/lars_resnet50_imagenet.py
    mbx train --config configs/lars_resnet50_imagenet.py optim.learning_rate=0.05   # sweep it

LARS: momentum SGD (0.9) whose step for each weight tensor is scaled by the trust ratio
0.001 * |w| / |g + wd w| (biases and BN parameters get neither the ratio nor weight decay);
5 epochs of linear warmup from 0, then polynomial decay of power 2 to 0 at epoch 90; weight
decay 1e-4. The model is configs/goyal_resnet50_imagenet.py's (zero-init residual BN, BN
over 32 examples). The peak LR is Goyal's linear rule, 0.1 per 256 = 12.8 at 32768: You et
al. tuned it per batch size, so treat it as the centre of a sweep.

Expected (You et al. 2017): ResNet-50 trains at batch 32K without loss of top-1 accuracy
against the small-batch baseline, where momentum SGD with linear scaling and warmup alone
degrades beyond 8K. Needs ImageNet prepared in the data dir and accelerators (a pod slice
or many GPUs; on one GPU micro-batches of 256 accumulate the batch, 128 per step).
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='imagenet2012'),
      model=mbx.ModelConfig(name='resnet50', options={'zero_init_residual': True,
                                                      'norm': 'ghost', 'ghost_batch_size': 32}),
      optim=mbx.OptimConfig(name='lars', learning_rate=0.1, lr_scaling='linear',
                            base_batch_size=256, momentum=0.9, weight_decay=1e-4,
                            trust_coefficient=0.001, schedule='polynomial', power=2.0,
                            end_lr_factor=0.0, warmup='5 epochs', warmup_start_factor=0.0),
      train=mbx.TrainConfig(batch_size=32768, max_device_batch_size=256, duration='90 epochs',
                            log_every='10 steps', eval_every='1 epochs',
                            checkpoint_every='1 epochs', keep_checkpoints=3),
      name='lars_resnet50_imagenet',
  )
