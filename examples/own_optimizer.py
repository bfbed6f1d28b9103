"""Your own optimizer and update rule in mbx: an optax chain and a SAM written in this file.

    python examples/own_optimizer.py            # train, sweep + critical batch size, sharpness, SAM
    python examples/own_optimizer.py --quick    # the same, smaller (what the test runs)
    mbx train --config examples/own_optimizer.py optim.options='{"beta": 0.95}'

`signum` is an optax chain (sign of a momentum average, decoupled weight decay), declared
with what mbx must know of it: its momentum option (Smith's noise scale g), its batch rule
(how the LR range of a sweep moves with B) and no diagonal preconditioner. `SharpnessAware`
is SAM (Foret et al. 2021) as a user would write it: the gradient at θ + ρ g/|g|, computed by
mbx once per device and micro-batch (m-sharpness). The config names both by import path;
mbx records the paths in each run's config.json, so every later command rebuilds them in a
fresh process. Nothing here touches a private name of mbx.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

import mbx
from mbx.sweep import SearchSpace, SweepConfig

THIS_FILE = pathlib.Path(__file__).resolve()


@mbx.optim.declare(momentum='beta', batch_rule='sqrt', reference_lr=1e-3, label='Signum')
def signum(learning_rate, beta: float = 0.9, weight_decay: float = 0.0):
  """Signum (Bernstein et al. 2018): the sign of an EMA of the gradient, with AdamW-style
  decoupled weight decay; every update coordinate has size η, as Adam's roughly has."""
  return optax.chain(optax.trace(decay=beta, nesterov=False),
                     optax.scale_by_sign(),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


@dataclasses.dataclass(frozen=True)
class SharpnessAware:
  """SAM's gradient for one group of examples: g at θ, then the gradient at θ + ρ g/|g|."""
  rho: float = 0.05
  name: ClassVar[str] = 'sharpness_aware'
  gradient_evaluations: ClassVar[int] = 2  # a step costs about two plain ones
  packable: ClassVar[bool] = True
  accumulates: ClassVar[bool] = True

  def group_gradient(self, value_and_grad, params):
    (loss, aux), grads = value_and_grad(params)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    ascent = jax.tree.map(lambda p, g: p + self.rho * g / (norm + 1e-12), params, grads)
    _, ascent_grads = value_and_grad(ascent)
    return (loss, aux), ascent_grads


def get_config() -> mbx.Config:
  """MNIST-1D's CNN (the built-in dataset), trained with `signum`."""
  return mbx.Config(
      data=mbx.DataConfig(name='mnist1d'),
      model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name=f'{THIS_FILE}:signum', learning_rate=1e-3,
                            options={'beta': 0.9, 'weight_decay': 1e-4}),
      train=mbx.TrainConfig(batch_size=64, duration='2000 steps', log_every='100 steps',
                            eval_every='500 steps', checkpoint_every='500 steps'),
      name='own_optimizer')


def get_sweep() -> SweepConfig:
  """Steps to 60% validation accuracy for B = 16 ... 256 with `signum`, LR range moving as
  √B (its declared batch rule)."""
  base = mbx.apply_overrides(get_config(), ['train.eval_every=1000 epochs',
                                            'train.checkpoint_every=none',
                                            'train.keep_checkpoints=1'])
  batch_sizes = (16, 64, 256)
  return SweepConfig(
      base=base, batch_sizes=batch_sizes, seeds=(0,),
      search=(SearchSpace(f'{THIS_FILE}:signum', learning_rate=(3e-4, 3e-3), num_learning_rates=3,
                          lr_scaling_power=0.5, reference_batch_size=64),),
      budgets={b: f'{max(200, 40000 // b)} steps' for b in batch_sizes},
      target_metric='eval_accuracy', target_value=0.6, stop_at_target=True,
      eval_growth=1.1, name='own_optimizer_sweep')


def mbx_command(*args: str, devices: int | None = None) -> None:
  """One `mbx` command in a fresh process, as a user would type it (`devices`: simulated CPU
  devices, as XLA_FLAGS sets them)."""
  env = dict(os.environ)
  if devices is not None:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  print('$ ' + (f'XLA_FLAGS=... ({devices} devices) ' if devices else '') + 'mbx '
        + ' '.join(args), flush=True)
  subprocess.run([sys.executable, '-m', 'mbx.cli', *args], check=True, env=env)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='runs/own_optimizer_example',
                      help='where the runs and the sweep go (default %(default)s)')
  parser.add_argument('--quick', action='store_true', help='fewer steps and batch sizes')
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  steps = ['train.duration=300 steps'] if args.quick else []
  sweep = (['sweep.batch_sizes=16,64,256', 'sweep.target_value=0.4'] if args.quick else [])
  mbx_command('train', '--config', str(THIS_FILE), '--workdir', str(out / 'signum'), '--quiet',
              *steps)
  mbx_command('sweep', '--config', str(THIS_FILE), '--sweep-dir', str(out / 'sweep'), *sweep)
  mbx_command('analyze', 'cbs', str(out / 'sweep'), '--bootstrap', '200')
  mbx_command('analyze', 'sharpness', str(out / 'signum'), '--subset', '500', '--top-k', '2',
              '--trace-samples', '10', '--density-runs', '0', '--subspace-dim', '10')
  # SAM from this file, on 8 (simulated) devices with 2 micro-batches each: 16 ascents a step,
  # one per group of 4 examples.
  mbx_command('train', '--config', str(THIS_FILE), '--workdir', str(out / 'signum_sam'),
              '--quiet', f'optim.update_rule={THIS_FILE}:SharpnessAware',
              'optim.update_rule_options={"rho": 0.05}', 'train.micro_batch_size=32', *steps,
              devices=8)
  for name in ('signum', 'signum_sam'):
    run = mbx.load_run(out / name)
    print(f'{name}: optimizer {run.config.optim.name.rpartition(":")[2]}, update rule '
          f'{run.config.optim.update_rule.rpartition(":")[2]}, {run.status["num_devices"]} '
          f'devices, test accuracy {run.status["test_accuracy"]:.3f} after '
          f'{run.status["step"]} steps')


if __name__ == '__main__':
  main()
