"""Packed trials (one vmapped program) equal the same trials run alone."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import mbx
from mbx.training.loop import train_packed
from mbx.training.packing import pack_key
from mbx.training.workload import resolve

from helpers import tiny_config


def _close(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    scale = np.max(np.abs(np.asarray(y))) + 1e-12
    assert np.max(np.abs(np.asarray(x) - np.asarray(y))) / scale <= rtol


def _trials(**train):
  base = dict(duration='30 steps', log_every='10 steps', eval_every='10 steps',
              checkpoint_every='20 steps', batch_size=16, **train)
  return [
      tiny_config(optim=dict(name='momentum', learning_rate=0.05, momentum=0.9),
                  train=dict(seed=0, **base)),
      tiny_config(optim=dict(name='momentum', learning_rate=0.2, momentum=0.5),
                  train=dict(seed=1, **base)),
      tiny_config(optim=dict(name='momentum', learning_rate=0.01, momentum=0.0),
                  train=dict(seed=2, data_seed=7, **base)),
  ]


def test_packed_trials_equal_solo_trials(tmp_path):
  configs = _trials(noise_scale=True)
  packed = train_packed(configs, [tmp_path / f'packed{i}' for i in range(3)], quiet=True)
  for i, (config, run) in enumerate(zip(configs, packed)):
    solo = mbx.train(config, tmp_path / f'solo{i}', quiet=True)
    assert run.status['status'] == solo.status['status'] == 'done'
    assert run.status['packed_trials'] == 3
    _close(run.params(), solo.params())
    _close(run.params(20), solo.params(20))
    for column in ('loss', 'accuracy', 'grad_norm', 'learning_rate', 'b_simple'):
      np.testing.assert_allclose(run.train_metrics[column], solo.train_metrics[column],
                                 rtol=1e-4, err_msg=column)
    np.testing.assert_allclose(run.eval_metrics['eval_loss'], solo.eval_metrics['eval_loss'],
                               rtol=1e-4)
    assert run.train_metrics['step'].tolist() == solo.train_metrics['step'].tolist()


def test_a_stack_evaluates_alike_vmapped_and_trial_by_trial(monkeypatch):
  """Packed trials are evaluated in one vmapped pass on accelerators and one by one on
  XLA:CPU (faster there); both give each trial's own row."""
  # pylint: disable-next=import-outside-toplevel
  from mbx.training import evaluation, loop, packing, programs
  s = loop.setup(resolve(tiny_config(train=dict(batch_size=16))))
  states = [programs.initial_state(s, seed) for seed in range(3)]
  stack = packing.stack_states(states)
  alone = [s.evaluator(state.params, state.model_state) for state in states]
  assert len({row['eval_loss'] for row in alone}) == 3
  for vmapped in (True, False):
    monkeypatch.setattr(evaluation.Evaluator, 'vmap_stacks', vmapped)
    rows = s.evaluator.stacked(stack.params, stack.model_state)
    for row, single in zip(rows, alone, strict=True):
      assert row.keys() == single.keys()
      for key, value in single.items():
        np.testing.assert_allclose(row[key], value, rtol=1e-5, err_msg=key)


def test_a_diverging_trial_leaves_the_others_intact(tmp_path):
  configs = _trials()
  configs[1] = tiny_config(optim=dict(name='momentum', learning_rate=1e4, momentum=0.5),
                           train=dict(seed=1, duration='30 steps', log_every='10 steps',
                                      eval_every='10 steps', checkpoint_every='20 steps',
                                      batch_size=16))
  packed = train_packed(configs, [tmp_path / f'p{i}' for i in range(3)], quiet=True)
  assert packed[1].status['status'] == 'diverged'
  for i in (0, 2):
    solo = mbx.train(configs[i], tmp_path / f'solo{i}', quiet=True)
    assert packed[i].status['status'] == 'done'
    _close(packed[i].params(), solo.params())


def test_a_trial_that_reaches_its_target_stops_where_it_would_alone(tmp_path):
  configs = _trials(target_metric='eval_accuracy', target_value=0.2, stop_at_target=True,
                    eval_growth=1.3)
  packed = train_packed(configs, [tmp_path / f'p{i}' for i in range(3)], quiet=True)
  stopped = [run for run in packed if 'target' in run.status['reason']]
  assert stopped, [run.status for run in packed]
  for i, run in enumerate(packed):
    solo = mbx.train(configs[i], tmp_path / f'solo{i}', quiet=True)
    assert run.status['step'] == solo.status['step']
    assert run.status.get('steps_to_target') == solo.status.get('steps_to_target')
    _close(run.params(), solo.params())


def test_trials_still_training_leave_a_pack_that_is_half_finished(tmp_path, monkeypatch):
  """Two of four trials reach their target early; the other two (an LR too small to learn)
  go on as a pack of two, and every trial still ends as it would alone."""
  from mbx.training import loop, packing  # pylint: disable=import-outside-toplevel
  decisions = []
  repack = packing.should_repack

  def free_compiles(active, trials, steps_left, step_seconds, compile_seconds):
    decisions.append(repack(active, trials, steps_left, step_seconds, 0.0))
    return decisions[-1]
  monkeypatch.setattr(loop, 'should_repack', free_compiles)  # 60 steps would not pay for one
  base = dict(duration='60 steps', log_every='10 steps', eval_every='1000 steps',
              checkpoint_every=None, batch_size=16, target_metric='eval_accuracy',
              target_value=0.2, stop_at_target=True, eval_growth=1.3)
  configs = [tiny_config(optim=dict(name='momentum', learning_rate=lr, momentum=0.9),
                         train=dict(seed=seed, **base))
             for lr, seed in ((0.05, 0), (1e-6, 1), (0.05, 2), (1e-6, 3))]
  packed = train_packed(configs, [tmp_path / f'p{i}' for i in range(4)], quiet=True)
  assert True in decisions  # the pack was split
  assert [('target' in run.status['reason']) for run in packed] == [True, False, True, False]
  for i, run in enumerate(packed):
    solo = mbx.train(configs[i], tmp_path / f'solo{i}', quiet=True)
    assert run.status['packed_trials'] == 4
    assert run.status['step'] == solo.status['step']
    assert run.status.get('steps_to_target') == solo.status.get('steps_to_target')
    _close(run.params(), solo.params())
    np.testing.assert_allclose(run.train_metrics['loss'], solo.train_metrics['loss'], rtol=1e-4)
    assert run.eval_metrics['step'].tolist() == solo.eval_metrics['step'].tolist()


def test_a_pack_splits_only_when_the_steps_left_pay_for_the_compile():
  from mbx.training.packing import should_repack  # pylint: disable=import-outside-toplevel
  assert not should_repack(7, 12, 10_000, 1e-3, 0.1)    # more than half still active
  assert not should_repack(0, 12, 10_000, 1e-3, 0.1)    # none left
  assert should_repack(6, 12, 10_000, 1e-3, 1.0)        # saves ~5 s for a 1 s compile
  assert not should_repack(6, 12, 1_000, 1e-3, 1.0)     # saves ~0.5 s: not worth it
  assert should_repack(1, 4, 100, 1e-2, 0.3) and not should_repack(1, 4, 100, 1e-2, 0.4)


def test_rerunning_a_finished_pack_does_nothing(tmp_path):
  configs = _trials()
  workdirs = [tmp_path / f'p{i}' for i in range(3)]
  first = train_packed(configs, workdirs, quiet=True)
  again = train_packed(configs, workdirs, quiet=True)
  assert [r.status for r in again] == [r.status for r in first]


def test_pack_key_separates_what_cannot_share_a_program():
  a, b, c = _trials()
  assert pack_key(a) == pack_key(b) == pack_key(c)
  other = tiny_config(train=dict(batch_size=32))
  assert pack_key(other) != pack_key(a)
  with pytest.raises(mbx.ConfigError, match='differ only in'):
    train_packed([a, other], ['/tmp/unused_a', '/tmp/unused_b'], quiet=True)
