"""Batch-size schedules (Smith et al. 2018) end to end: plan, examples per epoch, compiles,
logged noise scale, accumulation, and a kill mid-schedule resuming to identical parameters."""
from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

import mbx
from mbx import data as data_lib
from mbx.training.plan import make_plan
from mbx.training.workload import resolve

from helpers import REPO, RecordingDataset, run_python, tiny_config

N = 4000  # MNIST-1D training examples


def hybrid_config(**train):
  """Momentum SGD; B 100 -> 200 -> 400 at epochs 1 and 2, capped at 400 so the epoch-3
  milestone divides the LR by 2 instead (Smith et al.'s hybrid); LR warmup over half an
  epoch; 4 epochs = 40 + 20 + 10 + 10 steps."""
  fields = dict(batch_size=100, duration='4 epochs', batch_size_milestones=(1, 2, 3),
                batch_size_factor=2, max_batch_size=400, log_every='1 steps',
                eval_every='1 epochs', checkpoint_every=None)
  return tiny_config(optim=dict(name='momentum', learning_rate=0.05, momentum=0.9,
                                warmup='0.5 epochs', warmup_start_factor=0.1),
                     train={**fields, **train}, name='hybrid')


def test_plan_of_the_three_schedules():
  """Smith et al. Fig. 1 at MNIST-1D scale: 160 updates, 80 (hybrid), 75 (increasing)."""
  decaying = tiny_config(train=dict(batch_size=100, duration='4 epochs', log_every='7 steps'),
                         optim=dict(schedule='step', milestones=(1, 2, 3), decay_factor=0.5))
  increasing = tiny_config(train=dict(batch_size=100, duration='4 epochs', batch_size_factor=2,
                                      batch_size_milestones=(1, 2, 3), log_every='7 steps'))
  plans = {name: make_plan(c, 1, N) for name, c in
           [('decaying', decaying), ('increasing', increasing),
            ('hybrid', hybrid_config(log_every='7 steps'))]}
  assert {k: p.total_steps for k, p in plans.items()} == {
      'decaying': 160, 'increasing': 40 + 20 + 10 + 5, 'hybrid': 40 + 20 + 10 + 10}
  assert all(p.total_examples == 4 * N for p in plans.values())
  assert [(s, b.batch_size) for s, b in plans['increasing'].phases] == [
      (0, 100), (40, 200), (60, 400), (70, 800)]
  assert plans['hybrid'].lr_extra_decays == ((3 * N, 0.5),)
  # Log rows (every 7 steps) also end where B or a step of the LR changes, so that no row
  # mixes two batch sizes or two LRs.
  assert plans['decaying'].log_steps == set(range(7, 160, 7)) | {40, 80, 120, 160}
  assert {40, 60, 70} <= plans['increasing'].log_steps and {40, 60, 70} <= plans[
      'hybrid'].log_steps


def test_batch_past_the_training_set_asks_for_a_cap():
  config = tiny_config(train=dict(batch_size=1000, duration='4 epochs', batch_size_factor=5,
                                  batch_size_milestones=(1, 2)))
  with pytest.raises(mbx.ConfigError, match=r'train\.max_batch_size'):
    make_plan(config, 1, N)
  with pytest.raises(mbx.ConfigError, match=r'batch_size_milestone_unit.*s\*B examples'):
    mbx.validate(tiny_config(train=dict(batch_size_milestones=(1,), batch_size_factor=2,
                                        batch_size_milestone_unit='steps')))


def test_accumulation_switches_on_per_phase_and_respects_ghost_batch_norm():
  config = tiny_config(train=dict(batch_size=100, duration='4 epochs', batch_size_factor=5,
                                  batch_size_milestones=(1, 2), max_device_batch_size=300))
  shapes = [shape for _, shape in make_plan(config, 1, N).phases]
  assert [(s.batch_size, s.num_micro_batches) for s in shapes] == [(100, 1), (500, 2),
                                                                    (2500, 10)]
  # 4 devices hold 25, 125 and 625 examples each: only the last needs micro-batches.
  assert [s.num_micro_batches for _, s in make_plan(config, 4, N).phases] == [1, 1, 5]
  # Smith et al.'s ghost BN over 128: B = 16000 splits into 25 x 640, not 16 x 1000.
  wrn = mbx.load_config(REPO / 'configs/smith_wrn16_4_cifar10_increasing_batch.py')
  ghost = resolve(wrn).batch_granule
  assert ghost == 128
  plan = make_plan(wrn, 1, 50000, backend='gpu', batch_granule=ghost)
  assert [(s.batch_size, s.micro_batch_size) for _, s in plan.phases] == [
      (128, 128), (640, 640), (3200, 640), (16000, 640)]
  with pytest.raises(mbx.ConfigError, match='ghost_batch_size=128'):
    make_plan(wrn, 8, 50000, batch_granule=ghost)  # 16 examples per device cannot hold a ghost batch of 128


@pytest.fixture(scope='module')
def compiled_run(tmp_path_factory):
  """The hybrid run on device-resident data, counting XLA compilations by function."""
  compiles = collections.Counter()

  def listener(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      compiles[kwargs.get('fun_name')] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    run = mbx.train(hybrid_config(), tmp_path_factory.mktemp('hybrid'), quiet=True)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return run, compiles


def test_each_batch_shape_compiles_once(compiled_run):
  run, compiles = compiled_run
  assert sorted(run.train_metrics['batch_size'].unique()) == [100, 200, 400]
  # The train step is `step` (device-resident data) or `update` (host batches).
  assert compiles['jit(step)'] + compiles['jit(update)'] == 3, compiles


def test_logged_batch_size_learning_rate_and_noise_scale(compiled_run):
  """Per step: B, the LR (warmup, then the hybrid's decay) and g = lr N / (B (1 - m))."""
  rows = compiled_run[0].train_metrics
  assert rows['step'].tolist() == list(range(1, 81))
  expected_batch = [100] * 40 + [200] * 20 + [400] * 20
  assert rows['batch_size'].tolist() == expected_batch
  np.testing.assert_array_equal(np.diff(rows['examples_seen'], prepend=0), expected_batch)
  before = np.concatenate([[0], np.cumsum(expected_batch)[:-1]])  # examples before each step
  warmup = 0.5 * N
  lr = np.where(before < warmup, 0.05 * (0.1 + 0.9 * before / warmup), 0.05)
  lr = np.where(before >= 3 * N, lr / 2, lr)
  np.testing.assert_allclose(rows['learning_rate'], lr, rtol=1e-6)
  np.testing.assert_allclose(rows['sgd_noise_scale'], lr * N / (np.array(expected_batch) * 0.1),
                             rtol=1e-6)


def test_examples_per_epoch_are_exact_across_batch_changes(tmp_path):
  """Every example once per epoch, whatever the batch: read from the host source."""
  config = mbx.apply_overrides(hybrid_config(log_every='1 epochs'), ['data.placement=host'])
  dataset = RecordingDataset(data_lib.resolve_dataset(config.data))
  reads = dataset.reads
  run = mbx.train(config, tmp_path, data=dataset, quiet=True)
  assert [len(r) for r in reads] == [100] * 40 + [200] * 20 + [400] * 20
  stream = np.concatenate(reads)
  for epoch in range(4):
    assert sorted(stream[epoch * N:(epoch + 1) * N].tolist()) == list(range(N)), epoch
  assert run.status['examples_seen'] == 4 * N and run.status['epoch'] == 4.0
  assert run.eval_metrics['epoch'].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
  assert run.eval_metrics['examples_seen'].tolist() == [0, N, 2 * N, 3 * N, 4 * N]


KILL_OVERRIDES = ['optim.name=momentum', 'optim.learning_rate=0.05', 'train.batch_size=32',
                  'train.duration=6 epochs', 'train.batch_size_milestones=(2, 4)',
                  'train.batch_size_factor=5', 'train.log_every=5 steps',
                  'train.eval_every=2 epochs', 'train.checkpoint_every=1 epochs',
                  'name=kill_mid_schedule']


@pytest.mark.slow
def test_killed_mid_schedule_resumes_to_identical_parameters(tmp_path):
  """B 32 -> 160 -> 800 at epochs 2 and 4 (steps 250 and 300): `mbx train` is SIGKILLed in
  the second phase, after checkpoint 275 and logs up to step 300; re-running it resumes
  there and ends, through the third phase, bit for bit where an uninterrupted run does."""
  workdir = tmp_path / 'killed'
  code = f'''
    import os, signal
    from mbx.training.checkpoints import Checkpoints
    save = Checkpoints.save
    def save_or_die(self, state, meta):
      if meta['step'] == 300:
        self.wait()  # checkpoint 275 is committed
        os.kill(os.getpid(), signal.SIGKILL)
      return save(self, state, meta)
    Checkpoints.save = save_or_die
    from mbx.cli import main
    main(['train', '--config', 'configs/mnist1d_cnn.py', '--workdir', {str(workdir)!r},
          '--quiet', *{KILL_OVERRIDES!r}])
  '''
  with pytest.raises(AssertionError, match=r'\(-9\)'):
    run_python(code)
  killed = mbx.load_run(workdir)
  assert killed.status['status'] == 'running' and killed.checkpoint_steps[-1] == 275
  assert killed.train_metrics['step'].max() == 300  # rows past the checkpoint, to be redone

  config = mbx.load_config(REPO / 'configs/mnist1d_cnn.py', KILL_OVERRIDES)
  resumed = mbx.train(config, workdir, quiet=True)
  reference = mbx.train(config, tmp_path / 'uninterrupted', quiet=True)
  assert resumed.status['status'] == 'done' and resumed.status['step'] == 310
  for a, b in zip(jax.tree.leaves(resumed.params()), jax.tree.leaves(reference.params()),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.train_metrics['step'].tolist() == reference.train_metrics['step'].tolist()
  np.testing.assert_array_equal(resumed.train_metrics['loss'], reference.train_metrics['loss'])
  assert resumed.train_metrics['batch_size'].tolist() == reference.train_metrics[
      'batch_size'].tolist()
