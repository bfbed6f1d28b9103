"""Your own model and data through `mbx study`: the critical batch size and the sharp-minima
question answered on a Flax module and a numpy dataset written in this file.

    python examples/own_study.py             # both studies, each as a fresh `mbx study` process
    python examples/own_study.py --quick     # smoke-sized (what the test runs)
    mbx study sharp-minima --config examples/own_study.py study.small_batch=32

The problem: which of 4 frequencies a noisy sine wave of 32 samples has (random phase and
amplitude). The data has train, validation and test splits: the studies tune and stop on
train and validation and report test once per run. The model is a plain two-layer Flax MLP.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import numpy as np

import mbx

THIS_FILE = pathlib.Path(__file__).resolve()


class SineMLP(nn.Module):
  """Dense -> ReLU -> Dense; `num_classes` is filled in by mbx from the data."""
  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x)))


def noisy_sines(sizes=(1000, 500, 500), length: int = 32, noise: float = 0.8,
                seed: int = 0) -> mbx.ArrayDataset:
  """Sine waves of 4 frequencies with random phase and amplitude, plus Gaussian noise."""
  rng = np.random.default_rng(seed)
  n = sum(sizes)
  labels = rng.integers(0, 4, n)
  t = np.arange(length) / length
  phase = rng.uniform(0, 2 * np.pi, (n, 1))
  amplitude = rng.uniform(0.5, 1.5, (n, 1))
  waves = amplitude * np.sin(2 * np.pi * (1 + labels[:, None]) * t + phase)
  inputs = (waves + noise * rng.normal(size=(n, length))).astype(np.float32)
  cuts = np.cumsum(sizes)[:-1]
  splits = zip(np.split(inputs, cuts), np.split(labels, cuts))
  return mbx.ArrayDataset(dict(zip(('train', 'validation', 'test'), splits)))


def get_config() -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name=f'{THIS_FILE}:noisy_sines'),
      model=mbx.ModelConfig(name=f'{THIS_FILE}:SineMLP', options={'width': 64}),
      optim=mbx.OptimConfig(name='adam', learning_rate=3e-3),
      train=mbx.TrainConfig(batch_size=32, duration='10 epochs', eval_every='1 epochs',
                            checkpoint_every=None, target_metric='eval_accuracy',
                            target_value=0.8),
      name='own_study')


def mbx_command(*args: str) -> None:
  """One `mbx` command in a fresh process, as a user would type it."""
  print('$ mbx ' + ' '.join(args), flush=True)
  subprocess.run([sys.executable, '-m', 'mbx.cli', *args], check=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='studies/own_study')
  parser.add_argument('--quick', action='store_true')
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  quick = ['--quick'] if args.quick else []
  # --quick also tunes over one LR, 3x the config's (the full study tries 5 around it).
  smoke = ['study.learning_rate_factors=3.0'] if args.quick else []
  mbx_command('study', 'sharp-minima', '--config', str(THIS_FILE), '--out',
              str(out / 'sharp_minima'), *quick, *smoke, 'study.small_batch=32',
              'study.stop_value=0.05', 'study.max_epochs=100', 'study.subspace_dim=10',
              'study.density_runs=0')
  mbx_command('study', 'cbs', '--config', str(THIS_FILE), '--out', str(out / 'cbs'), *quick,
              'study.local_cbs_window=400 examples')
  mbx_command('report', str(out / 'sharp_minima'), str(out / 'cbs'), '-o',
              str(out / 'report.html'), '--quiet')
  for study in ('sharp_minima', 'cbs'):
    summary = json.loads((out / study / 'summary.json').read_text())
    print(f'{study}:', *summary['findings'][:3], sep='\n  ')


if __name__ == '__main__':
  main()
