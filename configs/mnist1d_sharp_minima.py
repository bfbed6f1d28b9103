"""MNIST-1D CNN trained to a fixed training loss, for sharp-minima studies (Keskar et al. 2017).

    mbx train --config configs/mnist1d_sharp_minima.py train.batch_size=400 train.seed=1
    mbx analyze sharpness runs/mnist1d_sharp_minima

Adam at a constant lr 1e-2 (the MNIST-1D reference LR; experiments/sharp_minima.py tunes it
per batch size on validation), the whole training split evaluated every epoch (the study
checks every ~2048 examples instead), stopping as soon as the training loss is <= 0.01
(training accuracy is then ~100% at every batch size), at most 300 epochs. Stopping at
equal training loss makes sharpness, λ_max and tr(H) comparable across
batch sizes: for cross-entropy they all keep shrinking as training goes on. Set
`train.batch_size` (256 = Keskar's small batch, 400 = 10% of the training set, 4000 = full
batch). Expected at B = 256: stops after ~40 epochs (~3 s), test accuracy ~90%.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='adam', learning_rate=1e-2),
      train=mbx.TrainConfig(batch_size=256, duration='300 epochs', log_every='10 epochs',
                            eval_every='1 epochs', eval_on_train=True,
                            target_metric='train_loss', target_value=0.01,
                            stop_at_target=True, checkpoint_every=None),
  )
