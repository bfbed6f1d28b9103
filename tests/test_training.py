"""The training loop end to end on MNIST-1D: records, accumulation, eval, divergence, loading."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx import data, models
from mbx.training import feed as feed_lib
from mbx.tasks import Classification
from mbx.tasks.classification import cross_entropy
from mbx.training.step import make_eval_step, make_mesh

from helpers import tiny_config


def _max_relative_error(a, b) -> float:
  errors = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y))) /
                                           (np.max(np.abs(np.asarray(y))) + 1e-12)), a, b)
  return max(jax.tree.leaves(errors))


def test_run_directory_records(tmp_path):
  run = mbx.train(tiny_config(train=dict(keep_checkpoints=1)), tmp_path, quiet=True)
  assert run.status['status'] == 'done'
  assert run.status['step'] == 20 and run.status['examples_seen'] == 20 * 64
  assert run.status['epoch'] == pytest.approx(20 * 64 / 4000)
  assert json.loads((tmp_path / 'config.json').read_text())['train']['batch_size'] == 64
  assert list(run.train_metrics['step']) == [5, 10, 15, 20]
  assert list(run.eval_metrics['step']) == [0, 10, 20]
  for column in ('loss', 'accuracy', 'grad_norm', 'update_norm', 'param_norm',
                 'learning_rate', 'examples_seen', 'epoch', 'examples_per_second'):
    assert np.all(np.isfinite(run.train_metrics[column])), column
  assert run.train_metrics['learning_rate'].iloc[0] == pytest.approx(1e-2)
  assert run.eval_metrics['eval_examples'].iloc[-1] == 1000
  assert run.eval_metrics['eval_accuracy'].iloc[-1] > run.eval_metrics['eval_accuracy'].iloc[0]
  assert set(run.metrics['step']) == {0, 5, 10, 15, 20}
  assert run.checkpoint_steps == [20]  # keep_checkpoints=1 keeps the final one
  loaded = mbx.load_run(tmp_path)
  params = loaded.params()
  model = loaded.build_model()
  # Along training the run evaluates on validation; test once, at the end, on the final state.
  for split, key in (('validation', 'eval_accuracy'), ('test', 'test_accuracy')):
    x, y = data.load_arrays('mnist1d', split)
    logits = model.apply({'params': params}, x, train=False)
    accuracy = float(np.mean(np.argmax(logits, -1) == y))
    assert accuracy == pytest.approx(run.status[key], abs=1e-6), split
  assert run.status['test_examples'] == 1000
  assert not any(c.startswith('test_') for c in run.eval_metrics.columns)


def test_a_runs_checkpoints_evaluate_to_the_metrics_it_recorded(tmp_path):
  """Run.evaluate at two checkpoints equals the eval rows written there; Run.dataset is the
  split it evaluated."""
  run = mbx.train(tiny_config(), tmp_path, quiet=True)  # checkpoints at 10 and 20
  assert run.checkpoint_steps == [10, 20]
  recorded = run.eval_metrics.set_index('step')
  for step in (10, 20):
    metrics = run.evaluate('validation', step=step)
    for name in ('loss', 'accuracy', 'error', 'examples'):
      assert metrics[name] == pytest.approx(recorded.loc[step, f'eval_{name}'], rel=1e-6), name
  assert run.evaluate('validation') == run.evaluate('validation', step=20)
  assert run.evaluate('test')['accuracy'] == pytest.approx(run.status['test_accuracy'], rel=1e-6)
  validation = run.dataset('validation')
  np.testing.assert_array_equal(validation['targets'],
                                data.load_arrays('mnist1d', 'validation')[1])
  assert len(validation['inputs']) == recorded.loc[10, 'eval_examples']
  with pytest.raises(mbx.ConfigError, match='valid'):
    run.evaluate('valid')


def test_the_test_split_is_chosen_or_turned_off_and_a_bad_one_is_refused(tmp_path):
  off = mbx.train(tiny_config(data=dict(test_split='none')), tmp_path / 'off', quiet=True)
  assert off.status['status'] == 'done'
  assert not any(k.startswith('test_') for k in off.status)
  chosen = mbx.train(tiny_config(data=dict(test_split='train[:500]')), tmp_path / 'chosen',
                     quiet=True)
  assert chosen.status['test_examples'] == 500
  with pytest.raises(mbx.ConfigError, match=r"data\.test_split='valid'") as error:
    mbx.train(tiny_config(data=dict(test_split='valid')), tmp_path / 'bad', quiet=True)
  assert '\n' not in str(error.value) and not (tmp_path / 'bad').exists()


def test_the_cnn_takes_batch_norm_for_small_batch_studies(tmp_path):
  config = tiny_config(model=dict(options={'norm': 'batch'}), train=dict(batch_size=4))
  run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['status'] == 'done'
  params, model_state, _ = run.restore()
  assert 'BatchNorm_0' in params and 'batch_stats' in model_state
  assert np.isfinite(run.status['test_loss'])
  with pytest.raises(mbx.ConfigError, match="model.options.norm='layer'"):
    mbx.resolve(tiny_config(model=dict(options={'norm': 'layer'})))


@pytest.mark.parametrize('accumulation', ['unrolled', 'scan'])
def test_accumulation_equals_the_big_batch(tmp_path, accumulation):
  """A global batch of 512 as 8 x 64 gives the same update as 512 at once."""
  def params_after(micro_batch_size, name):
    config = tiny_config(train=dict(batch_size=512, micro_batch_size=micro_batch_size,
                                    accumulation=accumulation, duration='4 steps',
                                    checkpoint_every=None))
    return mbx.train(config, tmp_path / name, quiet=True)
  whole = params_after(None, 'whole')
  accumulated = params_after(64, 'accumulated')
  assert _max_relative_error(accumulated.params(), whole.params()) < 1e-5
  np.testing.assert_allclose(accumulated.train_metrics['loss'], whole.train_metrics['loss'],
                             rtol=1e-5)


def test_accumulation_switches_on_above_the_device_maximum():
  from mbx.training.plan import make_plan
  config = tiny_config(train=dict(batch_size=512, max_device_batch_size=100))
  plan = make_plan(config, 1, 4000)
  assert plan.shape_at(0).num_micro_batches == 8  # 512 = 8 x 64, 64 <= 100


def test_cross_entropy_is_optax_integer_label_cross_entropy():
  """Same loss as optax's (which picks the label logit with take_along_axis); gradients
  equal to rounding, also for extreme logits."""
  import optax  # pylint: disable=import-outside-toplevel
  logits = jax.random.normal(jax.random.key(0), (64, 10)) * jnp.array([1.0] * 9 + [80.0])
  labels = jax.random.randint(jax.random.key(1), (64,), 0, 10)
  ours = jax.value_and_grad(lambda l: cross_entropy(l, labels).mean())(logits)
  reference = jax.value_and_grad(
      lambda l: optax.softmax_cross_entropy_with_integer_labels(l, labels).mean())(logits)
  np.testing.assert_array_equal(cross_entropy(logits, labels),
                                optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  assert float(ours[0]) == float(reference[0])
  np.testing.assert_allclose(ours[1], reference[1], rtol=1e-6, atol=1e-9)


def test_eval_counts_every_example_exactly_once():
  """1000 examples in padded batches of 300: each counted once, none of the padding."""
  model = models.build_model('cnn1d', num_classes=10)
  x, y = data.load_arrays('mnist1d', 'test')
  params = model.init(jax.random.key(0), x[:1], train=False)['params']
  mesh = make_mesh()
  batches = feed_lib.eval_batches({'inputs': x, 'targets': y}, 300, mesh)
  assert len(batches) == 4
  eval_step = make_eval_step(model, Classification())
  totals = [eval_step(params, {}, *batch) for batch in batches]
  count = sum(float(t['count']) for t in totals)
  assert sum(float(t['examples']) for t in totals) == 1000
  loss = sum(float(t['loss']) for t in totals) / count
  correct = sum(float(t['correct']) for t in totals)
  logits = model.apply({'params': params}, x, train=False)
  assert count == 1000
  assert loss == pytest.approx(float(cross_entropy(logits, jnp.asarray(y)).mean()), rel=1e-5)
  assert correct == float(np.sum(np.argmax(logits, -1) == y))


def test_divergence_is_a_recorded_outcome(tmp_path):
  config = tiny_config(optim=dict(name='sgd', learning_rate=1e4),
                       train=dict(duration='50 steps', log_every='1 steps'))
  run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['status'] == 'diverged'
  assert 'loss' in run.status['reason']
  assert run.status['step'] < 50
  assert not run.checkpoint_steps or all(s < run.status['step'] for s in run.checkpoint_steps)
  again = mbx.train(config, tmp_path, quiet=True)  # re-running does not retry it
  assert again.status == run.status


def test_loss_bound_counts_as_divergence(tmp_path):
  run = mbx.train(tiny_config(train=dict(max_loss=1e-3)), tmp_path, quiet=True)
  assert run.status['status'] == 'diverged'
  assert 'train.max_loss' in run.status['reason']


def test_target_stops_the_run_and_is_recorded(tmp_path):
  config = tiny_config(train=dict(duration='400 steps', eval_every='20 steps',
                                  target_metric='eval_accuracy', target_value=0.5,
                                  stop_at_target=True, checkpoint_every=None))
  run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['status'] == 'done' and 'target' in run.status['reason']
  steps_to_target = run.status['steps_to_target']
  assert run.status['step'] == steps_to_target < 400
  first = run.eval_metrics[run.eval_metrics['eval_accuracy'] >= 0.5]['step'].min()
  assert steps_to_target == first
  assert run.status['examples_to_target'] == steps_to_target * 64
  assert run.checkpoint_steps == [steps_to_target]


def test_a_run_that_stops_before_its_first_log_step_writes_a_last_row(tmp_path):
  """Reaching the target at step 3 with log_every 100: one train row at step 3 with the
  interval's usual columns (the noise scale's too); a stop at a log step adds no second row."""
  columns = ('loss', 'accuracy', 'grad_norm', 'update_norm', 'param_norm', 'learning_rate',
             'batch_size', 'examples_seen', 'epoch', 'sgd_noise_scale', 'grad_sq_estimate',
             'b_simple', 'b_simple_run_average', 'examples_per_second', 'wall_time')
  target = dict(duration='300 steps', eval_every='3 steps', checkpoint_every=None,
                target_metric='eval_accuracy', target_value=0.15, stop_at_target=True,
                noise_scale=True)
  run = mbx.train(tiny_config(train=dict(log_every='100 steps', **target)), tmp_path / 'a',
                  quiet=True)
  assert run.status['step'] == 3 and 'target' in run.status['reason']
  assert run.train_metrics['step'].tolist() == [3]
  for column in columns:
    assert np.isfinite(run.train_metrics[column].iloc[0]), column
  assert run.train_metrics['examples_seen'].iloc[0] == 3 * 64
  logged = mbx.train(tiny_config(train=dict(log_every='3 steps', **target)), tmp_path / 'b',
                     quiet=True)
  assert logged.train_metrics['step'].tolist() == [3]
  assert logged.train_metrics['loss'].iloc[0] == run.train_metrics['loss'].iloc[0]


def test_an_interrupted_run_writes_a_last_row_that_its_resume_replaces(tmp_path, monkeypatch):
  from mbx.training import loop  # pylint: disable=import-outside-toplevel
  config = tiny_config(train=dict(duration='10 steps', log_every='100 steps',
                                  checkpoint_every='5 steps', eval_every='100 steps'))
  chunks = []

  def ctrl_c_after_step_7(self):
    chunks.append(None)  # a chunk of one step each: 10 steps, one progress tick per step
    if len(chunks) == 7:
      raise KeyboardInterrupt
  # pylint: disable-next=protected-access
  monkeypatch.setattr(loop._DeferredInterrupt, 'check', ctrl_c_after_step_7)
  with pytest.raises(KeyboardInterrupt):
    mbx.train(config, tmp_path / 'run', quiet=True)
  interrupted = mbx.load_run(tmp_path / 'run')
  assert interrupted.status['status'] == 'interrupted' and interrupted.status['step'] == 7
  assert interrupted.train_metrics['step'].tolist() == [7]
  assert np.isfinite(interrupted.train_metrics['loss'].iloc[0])
  monkeypatch.undo()
  resumed = mbx.train(config, tmp_path / 'run', quiet=True)
  whole = mbx.train(config, tmp_path / 'whole', quiet=True)
  assert resumed.train_metrics['step'].tolist() == whole.train_metrics['step'].tolist() == [10]
  assert resumed.train_metrics['loss'].iloc[0] == whole.train_metrics['loss'].iloc[0]


def test_bf16_compute_keeps_float32_params(tmp_path):
  run = mbx.train(tiny_config(model=dict(dtype='bfloat16')), tmp_path, quiet=True)
  assert run.status['status'] == 'done'
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(run.params()))
  assert run.eval_metrics['eval_accuracy'].iloc[-1] > 0.2


def test_host_placement_gives_the_same_run_as_device_placement(tmp_path):
  """Batches read on the host follow the same example order as on-device gathering."""
  on_device = mbx.train(tiny_config(data=dict(placement='device')), tmp_path / 'd', quiet=True)
  on_host = mbx.train(tiny_config(data=dict(placement='host')), tmp_path / 'h', quiet=True)
  assert _max_relative_error(on_host.params(), on_device.params()) < 1e-6


def test_examples_and_epochs_are_exact_when_the_batch_does_not_divide_the_epoch(tmp_path):
  config = tiny_config(train=dict(batch_size=96, duration='3 epochs', eval_every='1 epochs',
                                  log_every='1 epochs', checkpoint_every=None))
  run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['examples_seen'] == 125 * 96  # ceil(12000 / 96) steps
  epochs = run.eval_metrics['epoch'].tolist()
  assert epochs[0] == 0 and all(a < b for a, b in zip(epochs, epochs[1:]))
  # each eval sits at the first step whose examples reach the epoch mark
  for mark, epoch in zip([1, 2, 3], epochs[1:]):
    assert mark <= epoch < mark + 96 / 4000


def test_branch_from_another_runs_checkpoint(tmp_path):
  """A branched run starts from the source checkpoint's parameters and optimizer state."""
  source = mbx.train(tiny_config(), tmp_path / 'source', quiet=True)
  branch_config = tiny_config(train=dict(batch_size=128, duration='1 steps', log_every='1 steps',
                                         init_from=f'{tmp_path / "source"}@10',
                                         checkpoint_every=None),
                              optim=dict(learning_rate=1e-9))
  branch = mbx.train(branch_config, tmp_path / 'branch', quiet=True)
  assert branch.status['step'] == 1
  # With a vanishing LR, one Adam step barely moves the parameters from step 10's.
  assert _max_relative_error(branch.params(), source.params(10)) < 1e-6
  assert _max_relative_error(branch.params(), source.params(20)) > 1e-3
  with pytest.raises(mbx.ConfigError, match='no checkpoint at step 7'):
    mbx.train(tiny_config(train=dict(init_from=f'{tmp_path / "source"}@7')), tmp_path / 'bad',
              quiet=True)


def test_probe_every_nth_step_on_one_device(tmp_path):
  """One device has no gradient groups of its own, so only every 10th step splits its batch."""
  from mbx.training.plan import make_plan
  config = tiny_config(train=dict(noise_scale=True, duration='40 steps', log_every='20 steps'))
  plan = make_plan(config, 1, 4000, probe_groups=2)
  assert plan.probe_every == 10
  assert [plan.shape_at(s).num_micro_batches for s in (0, 1, 9, 10, 11)] == [2, 1, 1, 2, 1]
  assert not plan.shape_at(1).measure_noise and plan.shape_at(10).measure_noise
  # With gradient groups already there (accumulation), every step measures.
  assert make_plan(tiny_config(train=dict(noise_scale=True, micro_batch_size=32)), 1,
                   4000, probe_groups=2).probe_every == 1
  run = mbx.train(config, tmp_path, quiet=True)
  rows = run.train_metrics
  assert np.all(np.isfinite(rows['b_simple'])) and np.all(rows['trace_estimate'] > 0)
  every_step = mbx.train(tiny_config(train=dict(noise_scale=True, duration='40 steps',
                                                log_every='20 steps', probe_every=1)),
                         tmp_path / 'every', quiet=True)
  # Measuring splits the batch in two; the update is the same up to float round-off.
  assert _max_relative_error(run.params(), every_step.params()) < 1e-5
