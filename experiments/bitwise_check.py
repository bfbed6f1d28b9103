"""Fingerprints of trained parameters, to show that a refactor leaves every update bitwise unchanged.

    python experiments/bitwise_check.py --out /tmp/after.json [--compare results/bitwise_check.json]

Trains a handful of short runs that cover the step's code paths (Adam and momentum, the
residual MLP and the CNN, gradient accumulation, the noise-scale measuring step, a batch-size
schedule, packed trials, 8 simulated devices) through the public API only, and writes the
SHA-256 of each run's final parameters and its final eval loss. Run it before and after a change
on the same machine: equal hashes mean equal updates. Hashes differ across CPU types (XLA picks
kernels per instruction set), so compare on one machine. About 1 minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np

import mbx

CASES = {
    'cnn_adamw': dict(optim=dict(name='adamw', learning_rate=1e-2, weight_decay=0.05)),
    'mlp_momentum': dict(model=dict(name='mlp'), optim=dict(name='momentum', learning_rate=0.05)),
    'cnn_micro_batches': dict(train=dict(batch_size=64, micro_batch_size=16)),
    'cnn_noise_scale': dict(train=dict(noise_scale=True, probe_every=3)),
    'cnn_batch_schedule': dict(train=dict(duration='2 epochs', batch_size_milestones=(1,),
                                          batch_size_factor=2)),
}


def base_config(**sections) -> mbx.Config:
  config = mbx.Config(
      data=mbx.DataConfig(name='mnist1d'), model=mbx.ModelConfig(name='cnn1d'),
      optim=mbx.OptimConfig(name='adam', learning_rate=1e-2),
      train=mbx.TrainConfig(batch_size=64, duration='40 steps', log_every='10 steps',
                            eval_every='20 steps', checkpoint_every='20 steps'),
      name='bitwise')
  for section, fields in sections.items():
    config = dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **fields)})
  return config


def fingerprint(run) -> dict:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(run.params()):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return {'params_sha256': digest.hexdigest()[:16], 'eval_loss': run.status.get('eval_loss'),
          'step': run.status.get('step')}


def single_process(workdir: pathlib.Path) -> dict:
  results = {}
  for name, sections in CASES.items():
    results[name] = fingerprint(mbx.train(base_config(**sections), workdir / name, quiet=True))
  configs = [base_config(optim=dict(learning_rate=lr), train=dict(seed=seed))
             for lr, seed in ((1e-2, 0), (3e-3, 1), (3e-2, 2))]
  # mbx.train_packed since the Task redesign; mbx.training.packed before it.
  train_packed = getattr(mbx, 'train_packed', None) or importlib.import_module(
      'mbx.training.packed').train_packed
  runs = train_packed(configs, [workdir / f'packed_{i}' for i in range(3)], quiet=True)
  for i, run in enumerate(runs):
    results[f'packed_{i}'] = fingerprint(run)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--compare', default=None, help='an earlier --out file')
  parser.add_argument('--eight-devices', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    if args.eight_devices:
      run = mbx.train(base_config(), pathlib.Path(tmp) / 'eight', quiet=True)
      pathlib.Path(args.out).write_text(json.dumps({'cnn_8_devices': fingerprint(run)}))
      return
    results = single_process(pathlib.Path(tmp))
    side = pathlib.Path(tmp) / 'eight.json'
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
    subprocess.run([sys.executable, __file__, '--out', str(side), '--eight-devices'],
                   env=env, check=True)
    results.update(json.loads(side.read_text()))
  pathlib.Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True) + '\n')
  print(json.dumps(results, indent=2, sort_keys=True))
  if args.compare:
    before = json.loads(pathlib.Path(args.compare).read_text())
    same = [k for k in before if before[k] == results.get(k)]
    differ = [k for k in before if k not in same]
    print(f'{len(same)} of {len(before)} cases bitwise equal' +
          (f'; differ: {", ".join(differ)}' if differ else ''))
    sys.exit(1 if differ else 0)


if __name__ == '__main__':
  main()
