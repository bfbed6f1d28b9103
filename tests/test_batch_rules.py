"""Batch rules against their formulas, and in training: a batch-size schedule that changes β2
with the batch, resumed across the change."""
from __future__ import annotations

import math

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import mbx
from mbx.optim import batch_rules
from mbx.training.checkpoints import Checkpoints
from mbx.training.workload import resolve

from helpers import tiny_config

ADAM = {'learning_rate': 1e-3, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8, 'weight_decay': 0.1}


@pytest.mark.parametrize('ratio', [0.25, 2.0, 8.0])
def test_each_rule_is_its_formula(ratio):
  apply = lambda rule: batch_rules.apply(rule, ADAM, ratio)
  assert apply('none') == ADAM
  assert apply('linear')['learning_rate'] == pytest.approx(1e-3 * ratio)
  assert apply('sqrt')['learning_rate'] == pytest.approx(1e-3 * math.sqrt(ratio))
  # Malladi et al. 2022: η√κ, 1 − β → κ(1 − β), ε/√κ.
  sde = apply('adam_sde')
  assert sde['learning_rate'] == pytest.approx(1e-3 * math.sqrt(ratio))
  assert 1 - sde['b1'] == pytest.approx(ratio * 0.1)
  assert 1 - sde['b2'] == pytest.approx(ratio * 0.001)
  assert sde['eps'] == pytest.approx(1e-8 / math.sqrt(ratio))
  # Marek et al. 2025: β2's half-life, counted in examples, stays fixed.
  b2 = apply('beta2_half_life')['b2']
  half_life_in_examples = lambda beta, batch: math.log(0.5) / math.log(beta) * batch
  assert half_life_in_examples(b2, 64 * ratio) == pytest.approx(half_life_in_examples(0.999, 64))
  # Bergsma et al. 2025: τ = B / (η λ D) stays fixed, whatever the LR rule to its left did.
  tau = lambda h, batch: batch / (h['learning_rate'] * h['weight_decay'] * 4000)
  for rule in ('adamw_timescale', 'sqrt+adamw_timescale', 'linear+adamw_timescale'):
    assert tau(apply(rule), 64 * ratio) == pytest.approx(tau(ADAM, 64)), rule
  assert apply('sqrt+beta2_half_life')['b2'] == pytest.approx(0.999 ** ratio)
  assert batch_rules.lr_factor('sqrt+beta2_half_life', ratio) == pytest.approx(math.sqrt(ratio))


def test_bad_rules_are_named_in_one_line():
  with pytest.raises(ValueError, match=r"optim.lr_scaling='sqrtt': 'sqrtt' is not a batch rule"):
    batch_rules.parse('sqrtt', 'optim.lr_scaling')
  with pytest.raises(ValueError, match='two of its rules set the same hyperparameter'):
    batch_rules.parse('sqrt+linear', 'train.batch_size_rule')
  with pytest.raises(ValueError, match=r'adam_sde: at κ = 20'):
    batch_rules.apply('adam_sde', ADAM, 20.0)
  with pytest.raises(ValueError, match=r'adamw_timescale reads the new LR, so the LR rule \(sqrt\) '
                     r'must come before it'):
    batch_rules.parse('adamw_timescale+sqrt', 'train.batch_policy_lr')


def test_a_rule_needing_a_hyperparameter_the_optimizer_lacks_stops_before_compiling():
  config = tiny_config(optim=dict(name='sgd', learning_rate=0.1),
                       train=dict(batch_size_milestones=(1,), batch_size_factor=2,
                                  duration='2 epochs', batch_size_rule='beta2_half_life'))
  with pytest.raises(mbx.ConfigError) as error:
    resolve(config)
  assert str(error.value) == ("train.batch_size_rule='beta2_half_life': needs the optimizer's "
                              "b2, which optim.name='sgd' does not have")


def _hyperparameters(workdir, step):
  manager = ocp.CheckpointManager(workdir / 'checkpoints', item_names=('train_state',))
  restored = manager.restore(step, args=ocp.args.Composite(
      train_state=ocp.args.StandardRestore()))
  return {k: float(v) for k, v in restored['train_state']['opt_state']['hyperparams'].items()}


def test_a_schedule_changes_beta2_with_the_batch_and_resumes_across_the_change(
    tmp_path, monkeypatch):
  """B 64 -> 128 after 10 steps under sqrt+beta2_half_life: the LR grows by √2 and β2 becomes
  β2², held in the optimizer state; a run that fails when saving step 15 resumes from step 10
  (whose state still holds β2: the rule is applied again at the phase start) and ends bit for
  bit where an uninterrupted run does."""
  config = tiny_config(train=dict(batch_size_milestones=(640,), batch_size_factor=2,
                                  batch_size_milestone_unit='examples', duration='1920 examples',
                                  checkpoint_every='5 steps', keep_checkpoints=4,
                                  batch_size_rule='sqrt+beta2_half_life'), name='rule')
  reference = mbx.train(config, tmp_path / 'uninterrupted', quiet=True)
  rows = reference.train_metrics.set_index('step')
  assert rows.loc[[5, 10, 15, 20], 'batch_size'].tolist() == [64, 64, 128, 128]
  np.testing.assert_allclose(rows.loc[15, 'learning_rate'] / rows.loc[10, 'learning_rate'],
                             math.sqrt(2), rtol=1e-6)
  assert _hyperparameters(tmp_path / 'uninterrupted', 10)['b2'] == pytest.approx(0.999)
  assert _hyperparameters(tmp_path / 'uninterrupted', 20)['b2'] == pytest.approx(0.999 ** 2)

  save = Checkpoints.save

  def save_or_fail(self, state, meta):
    if meta['step'] == 15:
      raise OSError('No space left on device')
    return save(self, state, meta)
  monkeypatch.setattr(Checkpoints, 'save', save_or_fail)
  with pytest.raises(OSError):
    mbx.train(config, tmp_path / 'failed', quiet=True)
  assert mbx.load_run(tmp_path / 'failed').status['last_good_step'] == 10
  assert _hyperparameters(tmp_path / 'failed', 10)['b2'] == pytest.approx(0.999)
  monkeypatch.setattr(Checkpoints, 'save', save)
  resumed = mbx.train(config, tmp_path / 'failed', quiet=True)
  assert resumed.status['status'] == 'done'
  assert _hyperparameters(tmp_path / 'failed', 20) == _hyperparameters(
      tmp_path / 'uninterrupted', 20)
  for a, b in zip(jax.tree.leaves(resumed.params()), jax.tree.leaves(reference.params()),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_policy_decision_sets_the_rules_hyperparameters(tmp_path):
  """Batch-size warmup at fixed points (B 64 -> 128 -> 256 at epochs 0.5 and 1) under
  train.batch_policy_lr=adam_sde: the LR grows by √κ and β1, β2, ε follow Malladi's rule, in
  the optimizer state from the decision on; the segments recorded in the checkpoints say so."""
  config = tiny_config(train=dict(
      batch_policy='warmup', batch_policy_milestones=(0.5, 1.0), duration='1.5 epochs',
      min_batch_size=64, max_batch_size=256, log_every='4 steps', eval_every='1 epochs',
      checkpoint_every='1 epochs', batch_policy_lr='adam_sde'), name='policy_rule')
  run = mbx.train(config, tmp_path, quiet=True)
  rows = run.train_metrics
  np.testing.assert_allclose(rows['learning_rate'], 1e-2 * np.sqrt(rows['batch_size'] / 64),
                             rtol=1e-6)
  hyper = _hyperparameters(tmp_path, run.checkpoint_steps[-1])
  assert run.train_metrics['batch_size'].iloc[-1] == 256
  assert 1 - hyper['b1'] == pytest.approx(4 * 0.1, rel=1e-5)
  assert 1 - hyper['b2'] == pytest.approx(4 * 0.001, rel=1e-3)
  assert hyper['eps'] == pytest.approx(1e-8 / 2, rel=1e-5)
