"""Your own model, data, loss and probes: resolution by import path, tasks, checks before compiling,
and the one step program that AutoBatch, dry runs and the loop all compile."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx import cli
from mbx.config import ConfigError
from mbx.data import ArrayDataset
from mbx.training import autobatch as autobatch_lib
from mbx.training import loop, programs
from mbx.training.workload import resolve

from helpers import REPO, tiny_config

import user_datasets  # pylint: disable=wrong-import-order
import user_models  # pylint: disable=wrong-import-order


def _regression_config(**train) -> mbx.Config:
  return mbx.Config(
      data=mbx.DataConfig(name='user_datasets:make_regression', options={'n': 256}),
      model=mbx.ModelConfig(name='user_models:Linear'),
      task=mbx.TaskConfig(name='regression'),
      optim=mbx.OptimConfig(name='sgd', learning_rate=0.05),
      train=mbx.TrainConfig(batch_size=32, duration='200 steps', log_every='20 steps',
                            eval_every='20 steps', checkpoint_every=None, **train),
      name='regression')


def test_a_user_module_and_factory_train_and_record_their_import_path(tmp_path):
  config = tiny_config(model=dict(name='user_models:TwoLayer', options={'width': 8}))
  run = mbx.train(config, tmp_path / 'class', quiet=True)
  assert run.status['status'] == 'done'
  recorded = json.loads((tmp_path / 'class' / 'config.json').read_text())['model']
  # user_models is importable here only through the test's sys.path, so its file is recorded.
  assert recorded == {'name': str(REPO / 'tests' / 'user_models.py') + ':TwoLayer',
                      'options': {'width': 8, 'num_classes': 10}, 'dtype': 'float32'}
  model = mbx.load_run(tmp_path / 'class').build_model()
  assert type(model).__name__ == 'TwoLayer' and model.width == 8
  factory = tiny_config(model=dict(name='user_models:small_two_layer'))
  assert mbx.train(factory, tmp_path / 'factory', quiet=True).status['status'] == 'done'


def test_a_module_instance_from_python_is_recorded_so_a_fresh_process_rebuilds_it(tmp_path):
  module = user_models.TwoLayer(num_classes=10, width=12)
  run = mbx.train(tiny_config(), tmp_path, model=module, quiet=True)
  name = run.config.model.name
  assert name.endswith('tests/user_models.py:TwoLayer') and run.config.model.options['width'] == 12
  code = (f'import mbx; r = mbx.load_run({str(tmp_path)!r}); m = r.build_model(); '
          'import jax; print(type(m).__name__, m.width, '
          'jax.tree.leaves(r.params())[0].shape)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                       check=True).stdout
  assert out.split()[:2] == ['TwoLayer', '12']


@pytest.mark.parametrize('accumulated', [False, True])
def test_regression_training_rows_report_the_rmse_of_their_loss(tmp_path, accumulated):
  """rmse = sqrt(mean squared error) in every training row, as in the eval rows; also through
  micro-batches and per-example weights (the step's other way of forming the loss)."""
  config = _regression_config()
  config = dataclasses.replace(config, train=dataclasses.replace(
      config.train, duration='12 steps', log_every='1 steps',
      micro_batch_size=8 if accumulated else None))
  if accumulated:
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, preprocess='user_datasets:scale_inputs'))
  run = mbx.train(config, tmp_path, quiet=True)
  rows = run.train_metrics
  assert len(rows) == 12 and (rows['loss'] > 0).all()
  np.testing.assert_allclose(rows['rmse'], np.sqrt(rows['loss']), rtol=1e-6)
  evals = run.eval_metrics
  np.testing.assert_allclose(evals['eval_rmse'], np.sqrt(evals['eval_loss']), rtol=1e-6)


def test_regression_reaches_its_target_and_eval_loss_is_exact_over_the_split(tmp_path):
  config = _regression_config(target_metric='eval_loss', target_value=0.05, stop_at_target=True)
  run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['reason'] == 'target eval_loss reached', run.status
  assert run.status['eval_loss'] <= 0.05 and 'steps_to_target' in run.status
  # The recorded eval loss equals a direct numpy computation over the whole test split.
  arrays = user_datasets.make_regression(n=256).arrays('test')
  params = jax.tree.map(np.asarray, run.params())
  w, b = params['Dense_0']['kernel'].astype(np.float64), params['Dense_0']['bias']
  outputs = arrays['inputs'].astype(np.float64) @ w + b
  expected = np.mean((outputs[:, 0] - arrays['targets']) ** 2)
  assert run.status['eval_loss'] == pytest.approx(expected, rel=1e-5)
  assert run.status['eval_examples'] == len(arrays['targets'])
  assert run.status['eval_rmse'] == pytest.approx(np.sqrt(expected), rel=1e-5)


def test_weighted_batches_accumulate_exactly(tmp_path):
  """With per-example weights, 4 micro-batches give the update of the whole weighted batch,
  even though the micro-batches carry different total weights."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 6)).astype(np.float32)
  y = rng.integers(0, 3, 256)
  weights = (rng.uniform(size=256) < 0.6).astype(np.float32)
  dataset = ArrayDataset({'train': {'inputs': x, 'targets': y, 'weights': weights},
                          'test': {'inputs': x[:64], 'targets': y[:64],
                                   'weights': np.ones(64, np.float32)}})

  def params_after(micro, name):
    config = tiny_config(model=dict(name='user_models:TwoLayer', options={'width': 8}),
                         train=dict(batch_size=64, micro_batch_size=micro, duration='3 steps',
                                    checkpoint_every=None, eval_every='3 steps'))
    return mbx.train(config, tmp_path / name, data=dataset, quiet=True).params()

  whole, accumulated = params_after(None, 'whole'), params_after(16, 'micro')
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(accumulated)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_weights_zero_out_examples_in_the_loss(tmp_path):
  """Examples of weight 0 do not move the parameters: training on data whose second half has
  weight 0 equals training with those examples' targets changed."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, 64)
  weights = np.r_[np.ones(32), np.zeros(32)].astype(np.float32)
  y_changed = np.r_[y[:32], (y[32:] + 1) % 3]

  def params_after(targets, name):
    dataset = ArrayDataset({'train': {'inputs': x, 'targets': targets, 'weights': weights},
                            'test': {'inputs': x, 'targets': y, 'weights': weights}},
                           num_classes=3)
    config = tiny_config(model=dict(name='user_models:TwoLayer'),
                         train=dict(batch_size=64, duration='2 steps', checkpoint_every=None,
                                    eval_every='2 steps'))
    return mbx.train(config, tmp_path / name, data=dataset, quiet=True).params()

  for a, b in zip(jax.tree.leaves(params_after(y, 'a')),
                  jax.tree.leaves(params_after(y_changed, 'b'))):
    np.testing.assert_array_equal(a, b)


def test_a_user_probe_runs_in_the_step_beside_the_noise_scale(tmp_path):
  config = tiny_config(train=dict(noise_scale=True, probe_every=2,
                                  probes=('user_models:LayerGradNorms',),
                                  duration='20 steps'))
  run = mbx.train(config, tmp_path, quiet=True)
  rows = run.train_metrics
  for column in ('grad_norm_first_layer', 'grad_norm_last_layer', 'grad_sq', 'trace_sigma',
                 'layer_probe_steps'):
    assert np.all(np.isfinite(rows[column])), column
  # B_simple is a number exactly where its |G|² average is positive (never a negative one).
  np.testing.assert_array_equal(np.isfinite(rows['b_simple']), rows['grad_sq'] > 0)
  assert rows['layer_probe_steps'].iloc[-1] == 10  # measured on every 2nd of 20 steps
  # Resuming restores the probe's state with the checkpoint.
  resumed = mbx.train(dataclasses.replace(config, train=dataclasses.replace(
      config.train, duration='30 steps')), tmp_path / 'longer', quiet=True)
  assert resumed.train_metrics['layer_probe_steps'].iloc[-1] == 15


def test_autobatch_measures_the_program_that_trains():
  """AutoBatch compiles the loop's own step: same builder, same arguments, same program."""
  config = tiny_config(train=dict(noise_scale=True))
  workload = resolve(config)
  s = loop.setup(workload)
  shape = s.plan.shapes_of_phase(0)[0]
  state = programs.initial_state(s, 0)
  compiled, _ = programs.compiled_steps(s, [shape], state, [workload.config])[0]
  compiler = autobatch_lib._StepCompiler(  # pylint: disable=protected-access
      workload, autobatch_lib.DataFacts.of(workload), s.mesh)
  step, args, _ = compiler.train_program(shape)
  ours, theirs = (_program(c.as_text()) for c in (step.lower(*args).compile(), compiled))
  assert ours == theirs and len(ours.splitlines()) > 100  # the whole program, not a header


def _program(hlo_text: str) -> str:
  """The compiled program without the source locations it records (which file called jit)."""
  lines = [line for line in hlo_text.splitlines()
           if not re.match(r'^(FileNames|FunctionNames|FileLocations|StackFrames)$|^\d+ ', line)]
  return re.sub(r', metadata=\{[^}]*\}', '', '\n'.join(lines))


@pytest.mark.parametrize('overrides,message', [
    (['model.name=user_models:Missing'], "model.name='user_models:Missing'"),
    (['model.name=no_such_package.mod:Model'], "cannot import 'no_such_package.mod'"),
    (['model.name=user_models:NotAModule'], 'not a flax.linen.Module class'),
    (['model.name=resnet99'], 'not a built-in name'),
    (['model.options.num_classes=5'], 'does not match the 10 classes'),
    (['model.name=user_models:Linear'], 'model output size 1 does not match the 10'),
    (['task.name=regression'], 'model output shape (10,) per example'),
    (['data.name=user_datasets:not_a_dataset'], 'expected mbx.data.ArrayDataset'),
    (['data.name=user_datasets:make_regression', 'data.train_split=validation'],
     'data.train_split'),
    (['train.target_metric=eval_f1', 'train.target_value=0.5'],
     'allowed: eval_loss, eval_accuracy, eval_error'),
    (['train.target_metric=eval_acuracy', 'train.target_value=0.5'],
     'did you mean eval_accuracy?'),
    (['task.name=user_models:Missing'], "task.name='user_models:Missing'"),
    (['train.probes=user_models:TwoLayer'], 'not a probe'),
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, overrides, message):
  workdir = tmp_path / 'run'
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['train', '--config', str(REPO / 'configs' / 'mnist1d_cnn.py'),
              '--workdir', str(workdir), *overrides])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip()
  assert message in error and len(error.splitlines()) == 1, error
  assert not workdir.exists()


def test_array_lengths_that_differ_are_an_error_naming_the_split():
  with pytest.raises(ValueError, match="train"):
    ArrayDataset({'train': (np.zeros((5, 2)), np.zeros(4, np.int32))})


def test_train_reruns_a_runs_config_json(tmp_path, capsys):
  mbx.train(tiny_config(), tmp_path / 'a', quiet=True)
  cli.main(['train', '--config', str(tmp_path / 'a' / 'config.json'),
            '--workdir', str(tmp_path / 'b'), '--quiet'])
  a, b = mbx.load_run(tmp_path / 'a'), mbx.load_run(tmp_path / 'b')
  assert a.config == b.config
  for x, y in zip(jax.tree.leaves(a.params()), jax.tree.leaves(b.params())):
    np.testing.assert_array_equal(x, y)


def test_a_tfds_builder_outside_mbx_trains_from_its_data_dir(tmp_path):
  builder = user_datasets.TinyBuilder(data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(file_format='array_record')
  config = tiny_config(data=dict(name='user_datasets:TinyBuilder',
                                 data_dir=str(tmp_path / 'tfds')),
                       model=dict(name='mlp', options={'hidden': (16,)}),
                       train=dict(batch_size=20, duration='30 steps'))
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  assert run.status['status'] == 'done' and run.status['eval_examples'] == 50
  assert run.config.model.options['num_classes'] == 3


def test_in_memory_data_cannot_be_reloaded_without_the_arrays(tmp_path):
  dataset = user_datasets.make_regression(n=64)
  run = mbx.train(_regression_config(), tmp_path, data=dataset, quiet=True)
  assert run.config.data.name == 'in-memory:regression'
  with pytest.raises(ConfigError, match='given from Python'):
    resolve(run.config)
  resolve(run.config, data=dataset)  # given again, it resolves


def test_an_inference_only_model_without_train_argument_is_evaluated(tmp_path):
  run = mbx.train(tiny_config(model=dict(name='user_models:TwoLayer')), tmp_path,
                  quiet=True)
  model = run.build_model()
  x = user_datasets.data.load_arrays('mnist1d', 'test')[0]
  logits = model.apply({'params': run.params()}, jnp.asarray(x))
  accuracy = float(np.mean(np.argmax(logits, -1) == user_datasets.data.load_arrays(
      'mnist1d', 'test')[1]))
  assert accuracy == pytest.approx(run.status['test_accuracy'], abs=1e-6)
