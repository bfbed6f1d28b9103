"""The papers' own setups (configs/smith_*, goyal_*, lars_*): their schedules, batch plans,
and a dry run that builds and compiles the real train step on small synthetic input."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx.optim import learning_rate_schedule
from mbx.training.dry_run import FAST_COMPILE, compile_one_step
from mbx.training.plan import make_plan

from helpers import REPO

CIFAR10, IMAGENET = 50000, 1281167
SMITH = {'decaying_lr': 'smith_wrn16_4_cifar10', 'hybrid': 'smith_wrn16_4_cifar10_hybrid',
         'increasing_batch': 'smith_wrn16_4_cifar10_increasing_batch'}


def load(name: str) -> mbx.Config:
  config = mbx.load_config(REPO / 'configs' / f'{name}.py')
  mbx.validate(config)
  return config


def lr_at(config: mbx.Config, epochs, num_examples: int, extra_decays=()) -> np.ndarray:
  schedule = learning_rate_schedule(config.optim, batch_size=config.train.batch_size,
                                    examples_per_epoch=num_examples,
                                    total_examples=90 * num_examples, extra_decays=extra_decays)
  return np.asarray(schedule(jnp.asarray(np.asarray(epochs) * num_examples)))


def test_smith_schedules_match_the_paper():
  """Smith et al. 2018 Fig. 1: ~78k, ~34k and ~29k updates; B up to 640 or 16000."""
  plans = {k: make_plan(load(name), 1, CIFAR10, backend='gpu') for k, name in SMITH.items()}
  assert {k: p.total_steps for k, p in plans.items()} == {
      'decaying_lr': 78125, 'hybrid': 34376, 'increasing_batch': 28876}
  assert [s.batch_size for _, s in plans['increasing_batch'].phases] == [128, 640, 3200, 16000]
  assert [s.batch_size for _, s in plans['hybrid'].phases] == [128, 640]
  epochs = [0, 59.9, 60, 120, 160, 199]
  np.testing.assert_allclose(lr_at(load(SMITH['decaying_lr']), epochs, CIFAR10),
                             [0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008], rtol=1e-5)
  np.testing.assert_allclose(lr_at(load(SMITH['hybrid']), epochs, CIFAR10,
                                   plans['hybrid'].lr_extra_decays),
                             [0.1, 0.1, 0.1, 0.02, 0.004, 0.004], rtol=1e-5)
  np.testing.assert_allclose(lr_at(load(SMITH['increasing_batch']), epochs, CIFAR10), 0.1)


def test_goyal_and_lars_schedules_match_the_papers():
  goyal = load('goyal_resnet50_imagenet')
  # Goyal et al.: 0.1 -> 3.2 over 5 epochs (k = 32), then x0.1 at 30, 60, 80.
  np.testing.assert_allclose(lr_at(goyal, [0, 2.5, 5, 29.9, 30, 60, 80, 89.9], IMAGENET),
                             [0.1, 1.65, 3.2, 3.2, 0.32, 0.032, 0.0032, 0.0032], rtol=1e-4)
  plan = make_plan(goyal, 8, IMAGENET, backend='gpu')
  (_, shape), = plan.phases
  assert (shape.batch_size, shape.micro_batch_size, shape.accumulation) == (8192, 2048, 'scan')
  assert plan.total_steps == -(-90 * IMAGENET // 8192)
  lars = load('lars_resnet50_imagenet')
  peak = 0.1 * 32768 / 256
  np.testing.assert_allclose(lr_at(lars, [0, 5, 47.5, 90], IMAGENET),
                             [0.0, peak, peak / 4, 0.0], rtol=1e-3, atol=1e-6)
  (_, shape), = make_plan(lars, 1, IMAGENET, backend='gpu').phases
  assert (shape.batch_size, shape.num_micro_batches) == (32768, 128)


@pytest.mark.parametrize('name', SMITH.values())
def test_smith_configs_compile_one_step(name):
  """WRN-16-4 at CIFAR's 32x32; ghost BN over 128 needs a batch of at least 128. The three
  differ only in their schedules, so one compiles (~5 s) and the others are lowered."""
  compile = name == SMITH['decaying_lr']
  dry = compile_one_step(load(name), batch_size=128, compile=compile,
                         compiler_options=FAST_COMPILE)
  assert dry.shape.batch_size == 128 and dry.shape.num_micro_batches == 1
  assert (dry.memory_bytes > 0) if compile else dry.compiled is None


@pytest.mark.slow
@pytest.mark.parametrize('name', ['goyal_resnet50_imagenet', 'lars_resnet50_imagenet'])
def test_resnet50_configs_compile_one_step(name):
  """The full ResNet-50 with the config's optimizer, BN and augmentation at 32x32 input and
  batch 32 (one ghost batch). Unoptimised: ~10 s of XLA:CPU compile each instead of ~20 s."""
  dry = compile_one_step(load(name), batch_size=32, input_shape=(32, 32, 3),
                         compiler_options=FAST_COMPILE)
  assert dry.compiled is not None and dry.memory_bytes > 0
