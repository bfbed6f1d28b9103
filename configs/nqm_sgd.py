"""The noisy quadratic model (Zhang et al. 2019, arXiv 1907.04164) trained by plain SGD.

    mbx train --config configs/nqm_sgd.py

Linear regression on data.name='nqm' with its defaults: inputs x ~ N(0, diag(h)), h_i = 1/i
for i = 1..100, targets y = xᵀθ* + 0.5 ε, 65,536 training examples; the `linear` model (no
bias) starts at θ = 0. Batch 64, LR 0.25 for 300 steps = 19,200 examples, less than one
epoch: every step sees fresh examples, so this is the online SGD whose expected loss
`mbx.measure.nqm.expected_loss` computes exactly (docs/science.md §19).

Expected: the exact expected loss is 1.216 at step 0, 0.365 at step 50, 0.301 at 100 and
0.259 at 300 (noise floor σ² = 0.25); the logged training loss follows it within its
sampling noise (tests/test_nqm.py checks this), and so do the validation losses. ~4 s on a
2-core CPU.
"""
import mbx


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='nqm'),
      model=mbx.ModelConfig(name='linear'),
      task=mbx.TaskConfig(name='regression'),
      optim=mbx.OptimConfig(name='sgd', learning_rate=0.25),
      train=mbx.TrainConfig(batch_size=64, duration='300 steps', log_every='10 steps',
                            eval_every='50 steps', checkpoint_every=None),
      name='nqm_sgd')
