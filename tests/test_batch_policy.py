"""Adaptive batch size (train.batch_policy): the decision rules, bad input, and runs whose
batch changes while they train."""
from __future__ import annotations

import collections
import json
import math
import pathlib

import jax
import numpy as np
import pytest

import mbx
from mbx import data as data_lib
from mbx.config import ConfigError
from mbx.figures import adaptive_batch
from mbx.training import batch_policy as bp
from mbx.training.checkpoints import Checkpoints
from mbx.training.plan import Segment, make_plan

from helpers import RecordingDataset, assert_one_line_error, mbx_train, run_python, tiny_config

N = 4000  # MNIST-1D training examples


# ------------------------------------------------------------------ decision rules
@pytest.mark.parametrize('variance, grad_sq, scale', [
    (4.0, 1.0, 2), (4.0, 1.0, 8), (0.5, 2.0, 4), (10.0, 0.1, 16), (1e-3, 5.0, 32)])
def test_adascale_gain_is_the_closed_form(variance, grad_sq, scale):
  expected = (variance + grad_sq) / (variance / scale + grad_sq)
  assert bp.adascale_gain(variance, grad_sq, scale) == pytest.approx(expected, rel=1e-12)
  assert 1.0 <= bp.adascale_gain(variance, grad_sq, scale) <= scale


@pytest.mark.parametrize('variance, grad_sq', [(4.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.3, 7.0)])
def test_adascale_gain_is_one_at_scale_one(variance, grad_sq):
  assert bp.adascale_gain(variance, grad_sq, 1) == 1.0


def test_adascale_gain_limits():
  assert bp.adascale_gain(1.0, 0.0, 8) == 8.0         # pure noise: the full linear gain
  assert bp.adascale_gain(0.0, 1.0, 8) == 1.0         # no noise: a bigger batch gains nothing
  assert bp.adascale_gain(math.nan, math.nan, 8) == 1.0  # not measured yet
  assert bp.adascale_gain(-1.0, 1.0, 8) == 1.0        # a negative (noisy) variance counts as 0


def test_efficiency_is_gain_over_scale():
  """Pollux's (phi + B0) / (phi + B) with phi = B_simple is AdaScale's r / S."""
  base, b_simple = 32, 150.0
  for batch in (32, 64, 256, 1024):
    variance, grad_sq = b_simple / base, 1.0  # sigma^2 of a base batch = tr(Sigma) / B0
    gain = bp.adascale_gain(variance, grad_sq, batch / base)
    assert bp.statistical_efficiency(b_simple, batch, base) == pytest.approx(
        gain / (batch / base), rel=1e-12)


def test_ladder_and_rounding():
  ladder = mbx.config.batch_ladder(32, 1000, 2)
  assert ladder == (32, 64, 128, 256, 512)
  assert bp.noise_scale_batch(100.0, 1.0, ladder, 32) == 128  # log-nearest to 100
  assert bp.noise_scale_batch(100.0, 4.0, ladder, 32) == 512  # 400, clipped by the ladder
  assert bp.noise_scale_batch(3.0, 1.0, ladder, 64) == 32     # below B_min: B_min
  assert bp.noise_scale_batch(math.nan, 1.0, ladder, 64) == 64  # not measured: unchanged


def test_warmup_climbs_one_rung_when_the_noise_scale_allows():
  ladder = (32, 64, 128)
  assert bp.warmup_batch(32, ladder, b_simple=63.0) == 32
  assert bp.warmup_batch(32, ladder, b_simple=64.0) == 64
  assert bp.warmup_batch(64, ladder, b_simple=1e6) == 128   # one rung per decision
  assert bp.warmup_batch(128, ladder, b_simple=1e6) == 128  # top of the ladder
  assert bp.warmup_batch(64, ladder, b_simple=10.0) == 64   # never down
  assert bp.warmup_batch(32, ladder, milestones_passed=2) == 128
  assert bp.warmup_batch(32, ladder, milestones_passed=5) == 128
  assert bp.warmup_batch(64, ladder, milestones_passed=1, initial=64) == 128
  assert bp.warmup_batch(64, ladder, milestones_passed=1, initial=32) == 64


def test_goodput_switches_only_for_a_large_enough_gain():
  seconds = {32: 1.0, 64: 1.0, 128: 2.0}  # 64 is free, 128 costs twice as much
  # phi huge: efficiency ~ 1 everywhere, so goodput ~ throughput: 64 and 128 tie, 64 first.
  assert bp.goodput_choice(seconds, 1e9, 32, 32)[0] == 64
  # phi small: big batches are wasted.
  assert bp.goodput_choice({32: 1.0, 64: 1.5, 128: 2.0}, 1.0, 32, 64)[0] == 32
  # a 3% gain is not worth switching for
  best, gain = bp.goodput_choice({32: 1.0, 64: 1.94}, 1e9, 32, 32)
  assert (best, gain) == (32, 0.0)
  best, gain = bp.goodput_choice({32: 1.0, 64: 1.94}, 1e9, 32, 32, min_gain=0.01)
  assert best == 64 and gain == pytest.approx(2 / 1.94 * (1e9 + 32) / (1e9 + 64) - 1)


def test_lr_factors():
  """The last argument is the optimizer's declared batch rule (momentum: linear, adam: sqrt)."""
  assert bp.lr_factor('sqrt', 4.0, 1.0, 'sqrt') == 2.0
  assert bp.lr_factor('linear', 4.0, 1.0, 'linear') == 4.0
  assert bp.lr_factor('none', 4.0, 1.0, 'linear') == 1.0
  assert bp.lr_factor('adam_sde', 4.0, 1.0, 'sqrt') == 2.0
  assert bp.lr_factor('adascale', 4.0, 3.0, 'linear') == 3.0
  assert bp.lr_factor('adascale', 4.0, 3.0, 'sqrt') == pytest.approx(math.sqrt(3.0))


# ------------------------------------------------------------------ bad input
POLICY = dict(duration='2 epochs', noise_scale=True, max_batch_size=256)


@pytest.mark.parametrize('fields, fragments', [
    (dict(batch_policy='growing'), ['train.batch_policy', 'growing', 'warmup', 'goodput']),
    (dict(batch_policy='noise_scale', min_batch_size=512),
     ['train.min_batch_size=512', 'train.max_batch_size=256']),
    (dict(batch_policy='warmup', batch_policy_factor=1), ['train.batch_policy_factor=1', '>= 2']),
    (dict(batch_policy='goodput', noise_scale=False), ['train.noise_scale', 'goodput']),
    (dict(batch_policy='adascale', noise_scale=False), ['train.noise_scale', 'adascale']),
    (dict(batch_policy='warmup', noise_scale=False), ['train.noise_scale', 'warmup']),
    (dict(batch_policy='noise_scale', max_batch_size=None), ['train.max_batch_size', 'required']),
    (dict(batch_policy='noise_scale', min_batch_size=48), ['train.batch_size=64', 'ladder']),
    (dict(batch_policy='noise_scale', duration='100 steps'), ['train.duration', 'epochs']),
    (dict(batch_policy='noise_scale', batch_size_milestones=(1.0,), batch_size_factor=2),
     ['train.batch_size_milestones', 'cannot be combined']),
    (dict(batch_policy='noise_scale', batch_policy_milestones=(1.0,)),
     ['train.batch_policy_milestones', 'warmup']),
    (dict(batch_policy='noise_scale', batch_policy_lr='cubic'), ['train.batch_policy_lr', 'sqrt']),
    (dict(batch_policy='warmup', batch_policy_criterion='loss'),
     ['train.batch_policy_criterion', 'branch']),
    (dict(batch_policy='warmup', batch_policy_criterion='branch', batch_policy_lr='adascale'),
     ['train.batch_policy_lr', 'branch criterion']),
    (dict(batch_policy='warmup', batch_policy_branch='10 steps'),
     ['train.batch_policy_branch', 'examples']),
])
def test_bad_policy_config_is_named(fields, fragments):
  with pytest.raises(ConfigError) as error:
    mbx.validate(tiny_config(train={**POLICY, **fields}))
  message = str(error.value)
  assert '\n' not in message
  for fragment in fragments:
    assert fragment in message, (fragment, message)


def test_warmup_at_milestones_or_by_branching_needs_no_noise_scale():
  mbx.validate(tiny_config(train={**POLICY, 'batch_policy': 'warmup', 'noise_scale': False,
                                  'batch_policy_milestones': (0.5, 1.0)}))
  mbx.validate(tiny_config(train={**POLICY, 'batch_policy': 'warmup', 'noise_scale': False,
                                  'batch_policy_criterion': 'branch'}))


# ------------------------------------------------------------------ runs that adapt
def policy_config(policy: str, **train):
  """Two epochs of MNIST-1D from B = 64 on the ladder 32..256, deciding every 8 steps."""
  fields = dict(batch_policy=policy, duration='2 epochs', noise_scale=True, min_batch_size=32,
                max_batch_size=256, log_every='8 steps', eval_every='1 epochs',
                checkpoint_every='1 epochs')
  optim = {}
  if policy == 'adascale':  # S = 128 / 32 = 4
    fields.update(batch_size=128, min_batch_size=None, max_batch_size=None)
    optim = dict(base_batch_size=32)
  return tiny_config(train={**fields, **train}, optim=optim, name=f'policy_{policy}')


def test_the_example_stream_is_exact_across_batch_changes(tmp_path):
  """Read from the host source: each step reads its batch, each example once per epoch, and
  each batch shape compiles once however often the policy returns to it."""
  compiles = collections.Counter()

  def listener(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      compiles[kwargs.get('fun_name')] += 1

  config = mbx.apply_overrides(policy_config('noise_scale'), ['data.placement=host'])
  dataset = RecordingDataset(data_lib.resolve_dataset(config.data))
  reads = dataset.reads
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    run = mbx.train(config, tmp_path, data=dataset, quiet=True)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  rows = run.train_metrics
  batches = [b for b, n in zip(rows['batch_size'], np.diff(rows['step'], prepend=0))
             for _ in range(n)]
  assert len(set(batches)) >= 2, 'the policy never changed B'
  # At a change the host feed is rebuilt; what its thread had read ahead at the old batch
  # size is dropped, unused.
  used, pending = [], list(reads)
  for batch in batches:
    while len(pending[0]) != batch:
      pending.pop(0)
    used.append(pending.pop(0))
  stream = np.concatenate(used)
  assert run.status['examples_seen'] == len(stream) >= 2 * N
  for epoch in range(2):
    assert sorted(stream[epoch * N:(epoch + 1) * N].tolist()) == list(range(N)), epoch
  # Decisions: the batch of the rows after each decision is the one it chose.
  decided = rows['policy_batch_size'].dropna().astype(int).tolist()
  assert rows['batch_size'].tolist()[1:] == decided[:len(rows) - 1]
  shapes = len(set(batches))
  assert compiles['jit(update)'] == 2 * shapes, compiles  # a measuring and a plain step each


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _Stop(Exception):
  """Stands for a crash right after a checkpoint was committed."""


def test_a_run_resumed_mid_adaptation_ends_bitwise_equal(tmp_path, monkeypatch):
  """B set from the noise scale, LR by AdaScale's gain (SGD with momentum): stopped after its
  second checkpoint, when B has already changed, the re-run resumes from it, makes the same
  decisions and ends with the uninterrupted run's parameters and logs, bit for bit."""
  config = policy_config('noise_scale', batch_policy_lr='adascale',
                         checkpoint_every='2000 examples')
  config = mbx.apply_overrides(config, ['optim.name=momentum', 'optim.learning_rate=0.05'])
  saved = []
  save = Checkpoints.save

  def save_or_stop(self, state, meta):
    if len(saved) == 2:
      self.wait()
      raise _Stop
    saved.append(meta)
    return save(self, state, meta)

  monkeypatch.setattr(Checkpoints, 'save', save_or_stop)
  with pytest.raises(_Stop):
    mbx.train(config, tmp_path / 'stopped', quiet=True)
  monkeypatch.undo()
  last = saved[-1]
  stopped = mbx.load_run(tmp_path / 'stopped').status
  assert stopped['status'] == 'failed' and stopped['last_good_step'] == last['step']
  assert len(last['batch_policy']['segments']) > 1, 'no decision before the checkpoint'
  assert {s['batch_size'] for s in last['batch_policy']['segments']} != {64}
  assert mbx.load_run(tmp_path / 'stopped').train_metrics['step'].max() > last['step']

  resumed = mbx.train(config, tmp_path / 'stopped', quiet=True)
  reference = mbx.train(config, tmp_path / 'uninterrupted', quiet=True)
  assert resumed.status['status'] == reference.status['status'] == 'done'
  assert resumed.status['step'] == reference.status['step']
  _assert_bitwise_equal(resumed.params(), reference.params())
  a, b = resumed.train_metrics, reference.train_metrics
  for column in ('step', 'batch_size', 'examples_seen', 'loss', 'learning_rate',
                 'adascale_gain', 'policy_batch_size'):
    np.testing.assert_array_equal(a[column], b[column], err_msg=column)
  assert len(set(a['batch_size'])) > 1 and (a['adascale_gain'].dropna() > 1).any()
  # AdaScale for SGD with momentum, as published: the LR of each interval is eta x the gain
  # decided before it (constant schedule), and the run ends when the schedule's progress,
  # advancing by gain x B0 (B0 = 64) a step, reaches the budget.
  gain = a['adascale_gain'].shift(1).fillna(1.0).to_numpy()
  np.testing.assert_allclose(a['learning_rate'], 0.05 * gain, rtol=1e-6)
  progress = np.cumsum(np.diff(a['step'], prepend=0) * 64 * gain)
  assert progress[-1] >= 2 * N > progress[-1] - 64 * gain[-1]
  figure = adaptive_batch.decisions({'resumed': resumed, 'uninterrupted': reference},
                                    tmp_path / 'decisions.png')
  assert figure.stat().st_size > 0


def test_every_policy_runs_on_eight_devices(tmp_path):
  """Each policy trains to its budget on 8 simulated devices, its batches on the ladder and
  split over the devices."""
  code = f"""
    import json, sys
    sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
    import jax, mbx
    from test_batch_policy import policy_config
    out = {{}}
    branch = dict(batch_policy_criterion='branch', batch_policy_branch='512 examples',
                  batch_policy_every='2000 examples')
    for name, policy, fields in (('warmup', 'warmup', {{}}), ('adascale', 'adascale', {{}}),
                                 ('noise_scale', 'noise_scale', {{}}),
                                 ('goodput', 'goodput', {{}}),
                                 ('warmup_branch', 'warmup', branch)):
      config = policy_config(policy, batch_policy_multiple=2.0, **fields)
      run = mbx.train(config, {str(tmp_path)!r} + '/' + name, quiet=True)
      rows = run.train_metrics
      out[name] = dict(status=run.status['status'], devices=run.status['num_devices'],
                         examples=run.status['examples_seen'],
                         batches=sorted(set(int(b) for b in rows['batch_size'])),
                         gains=[float(g) for g in rows['adascale_gain'].dropna()],
                         timed=sorted(int(b) for b in run.restore()[2]['batch_policy'].get(
                             'seconds_per_step', {{}})))
    print(json.dumps(out))
  """
  out = run_python(code, devices=8)
  for policy, result in out.items():
    assert result['status'] == 'done' and result['devices'] == 8, (policy, result)
    assert result['examples'] >= 2 * N, (policy, result)
    assert set(result['batches']) <= {32, 64, 128, 256}, (policy, result)
  assert out['adascale']['batches'] == [128]
  assert all(1 <= g <= 4 for g in out['adascale']['gains']) and max(out['adascale']['gains']) > 1
  assert len(out['noise_scale']['batches']) > 1  # B = 2 x B_simple moves
  assert out['goodput']['timed'] == [32, 64, 128, 256]  # every rung timed, on this machine
  print(json.dumps(out))


# ------------------------------------------------------------------ the plan of a policy
def test_a_decision_rebuilds_the_plan_from_its_step_on():
  config = policy_config('noise_scale', max_device_batch_size=64)
  first = make_plan(config, 1, N, probe_groups=2)
  assert first.batch_ladder == (32, 64, 128, 256) and first.max_batch_size == 256
  assert first.total_steps == 125 and first.schedule_examples == 2 * N
  assert first.decision_steps == frozenset(range(8, 125, 8)) <= first.log_steps
  later = make_plan(config, 1, N, probe_groups=2, segments=(
      Segment(0, 64), Segment(16, 256, progress=1024.0)))
  np.testing.assert_array_equal(later.examples_after_step[:17], first.examples_after_step[:17])
  assert later.total_steps == 16 + math.ceil((2 * N - 1024) / 256)
  assert later.shape_at(16).batch_size == 256
  assert later.shape_at(16).num_micro_batches >= 4  # accumulation switches on past 64
  assert later.progress_at(20) == 1024 + 4 * 256


def test_adascale_progress_sets_the_length_of_the_run():
  config = policy_config('adascale')  # B = 128, B0 = 32
  plan = make_plan(config, 1, N, probe_groups=2)
  assert plan.segments[0].rate == 32.0 and plan.total_steps == 2 * N // 32  # gain 1: base steps
  plan = make_plan(config, 1, N, probe_groups=2, segments=(
      plan.segments[0], Segment(10, 128, progress=320.0, progress_per_step=3 * 32.0, gain=3.0)))
  assert plan.total_steps == 10 + math.ceil((2 * N - 320) / 96)
  assert plan.schedule_examples == 2 * N


def test_a_rung_that_cannot_be_split_over_the_devices_is_named():
  config = policy_config('noise_scale', min_batch_size=4)
  with pytest.raises(ConfigError, match=r'batch 4 of its ladder .* 8 devices'):
    make_plan(config, 8, N, probe_groups=2)


def test_the_cli_rejects_a_policy_without_the_noise_scale_in_one_line(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                     'train.batch_policy=goodput', 'train.max_batch_size=512',
                     'train.duration=2 epochs')
  assert_one_line_error(result, 'train.noise_scale', 'goodput')
  assert not (tmp_path / 'run').exists()


def test_warmup_at_milestones_doubles_b_and_scales_adams_lr_by_sqrt2(tmp_path):
  config = policy_config('warmup', noise_scale=False, batch_policy_milestones=(0.5, 1.0),
                         log_every='4 steps')
  run = mbx.train(config, tmp_path, quiet=True)
  rows = run.train_metrics
  before = rows['examples_seen'] - rows['batch_size'] * np.diff(rows['step'], prepend=0)
  expected = np.select([before >= N, before >= N // 2], [256, 128], 64)
  np.testing.assert_array_equal(rows['batch_size'], expected)
  np.testing.assert_allclose(rows['learning_rate'], 1e-2 * np.sqrt(expected / 64), rtol=1e-6)
  assert 2 * N <= run.status['examples_seen'] < 2 * N + 256  # the last batch may overshoot


def test_warmup_by_the_branch_test_grows_when_the_next_rung_keeps_up(tmp_path):
  """Merrill et al.'s criterion: at each decision a copy trains 500 examples at B and at the
  next rung; with a loose tolerance B climbs a rung per decision, the losses logged."""
  config = policy_config('warmup', noise_scale=False, batch_policy_criterion='branch',
                         batch_policy_branch='512 examples', batch_policy_tolerance=10.0,
                         log_every='1000 examples', batch_policy_every='2000 examples')
  run = mbx.train(config, tmp_path, quiet=True)
  rows = run.train_metrics
  decisions = rows.dropna(subset=['policy_batch_size'])
  assert decisions['policy_batch_size'].tolist()[:2] == [128, 256]
  climbing = decisions[decisions['policy_batch_size'] <= 256].iloc[:2]
  assert (climbing['branch_loss'] > 0).all() and (climbing['branch_loss_next_rung'] > 0).all()
  assert decisions['branch_loss'].iloc[2:].isna().all()  # at the top rung: nothing to test
  assert sorted(set(rows['batch_size'])) == [64, 128, 256]
  strict = policy_config('warmup', noise_scale=False, batch_policy_criterion='branch',
                         batch_policy_branch='512 examples', batch_policy_tolerance=0.0,
                         log_every='1000 examples', batch_policy_every='2000 examples')
  run = mbx.train(strict, tmp_path / 'strict', quiet=True)
  decisions = run.train_metrics.dropna(subset=['policy_batch_size'])
  grew = decisions['branch_loss_next_rung'] <= decisions['branch_loss']
  first = decisions['policy_batch_size'].iloc[0]
  assert first == (128 if grew.iloc[0] else 64)


@pytest.mark.parametrize('estimator, expected', [('b_simple', 32), ('b_noise', 256)])
def test_a_policy_reads_the_estimator_it_is_told_to(estimator, expected):
  """The noise-scale policy moves to the rung nearest the named estimator
  (train.batch_policy_estimator), not to B_simple's."""
  from mbx.optim.optimizers import resolve_optimizer  # pylint: disable=import-outside-toplevel
  extra = () if estimator == 'b_simple' else (estimator,)
  config = policy_config('noise_scale', batch_policy_estimator=estimator,
                         noise_scale_estimators=extra)
  replan = lambda segments=None: make_plan(config, 1, N, probe_groups=2, segments=segments)
  policy = bp.BatchPolicy(config, replan, {}, resolve_optimizer(config))
  estimates = {'b_simple': 20.0, 'grad_sq': 1.0, 'trace_sigma': 20.0,
               'b_noise': 300.0, 'grad_h': 1.0, 'trace_h': 300.0}
  plan = policy.plan()
  _, columns = policy.decide(plan, 8, estimates, {})
  assert columns['policy_batch_size'] == expected
  assert columns['policy_b_simple'] == estimates[estimator]


def test_adascale_takes_the_named_estimators_two_estimates():
  from mbx.optim.optimizers import resolve_optimizer  # pylint: disable=import-outside-toplevel
  estimates = {'b_simple': 20.0, 'grad_sq': 1.0, 'trace_sigma': 20.0,
               'b_noise': 300.0, 'grad_h': 1.0, 'trace_h': 300.0}
  gains = {}
  for estimator in ('b_simple', 'b_noise'):
    extra = () if estimator == 'b_simple' else (estimator,)
    config = policy_config('adascale', batch_policy_estimator=estimator,
                           noise_scale_estimators=extra)
    replan = lambda segments=None, c=config: make_plan(c, 1, N, probe_groups=2,
                                                         segments=segments)
    policy = bp.BatchPolicy(config, replan, {}, resolve_optimizer(config))
    _, columns = policy.decide(policy.plan(), 8, estimates, {})
    gains[estimator] = columns['adascale_gain']
  # S = 4, base batch 32: gain = (σ² + μ²) / (σ²/S + μ²) with σ² = tr / 32.
  for estimator, trace in (('b_simple', 20.0), ('b_noise', 300.0)):
    variance = trace / 32
    assert gains[estimator] == pytest.approx((variance + 1) / (variance / 4 + 1))
