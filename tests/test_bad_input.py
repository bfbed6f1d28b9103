"""Bad input that used to get a traceback or nothing: one line, nothing written, nothing trained."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time

import pytest

import mbx
from mbx import cli
from mbx import config as config_lib
from mbx import registry
from mbx.config import ConfigError
from mbx.sweep import SearchSpace, SweepConfig, expand, runner

import user_datasets  # pylint: disable=wrong-import-order
from helpers import REPO, assert_one_line_error, mbx_cli, mbx_train, tiny_config


@pytest.fixture(autouse=True, scope='module')
def prepared_mnist1d():
  """MNIST-1D prepared in the session's data dir, so the CLI's stderr holds only the error."""
  mbx.resolve(tiny_config()).dataset.arrays('train')


def test_a_config_file_with_a_syntax_error_names_file_and_line(tmp_path):
  path = tmp_path / 'broken.py'
  path.write_text('import mbx\n\ndef get_config(:\n  return mbx.Config()\n')
  result = mbx_cli('train', '--config', str(path), '--workdir', str(tmp_path / 'run'))
  assert_one_line_error(result, f'{path}:3', 'syntax error')
  assert result.imported == []  # refused before the training stack loaded
  assert not (tmp_path / 'run').exists()


def test_warmup_longer_than_the_run_is_an_error_naming_both(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                      'train.duration=10 steps', 'optim.warmup=2 epochs')
  assert_one_line_error(result, "optim.warmup='2 epochs'", "train.duration='10 steps'")
  assert not (tmp_path / 'run').exists()


def test_init_from_a_missing_run_is_checked_before_anything_is_written(tmp_path):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                      f'train.init_from={tmp_path / "nowhere"}')
  assert_one_line_error(result, 'train.init_from', 'not a run directory')
  assert not (tmp_path / 'run').exists()


def test_a_catalog_dataset_that_is_not_prepared_is_said_before_the_model_that_cannot_take_it(
    tmp_path):
  # cnn1d cannot take MNIST's 28x28x1 images either: the data come first, since the model is
  # chosen for the data (download=False: nothing is fetched).
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                      'data.name=mnist', f'data.data_dir={tmp_path / "empty"}')
  assert_one_line_error(result, "'mnist' is not prepared", 'tfds build mnist')
  assert 'cnn1d' not in result.stderr
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'empty').exists()


def _line_of(function, statement: str) -> str:
  """'tests/user_datasets.py:<n>': the line of `function` that holds `statement`."""
  lines, first = inspect.getsourcelines(function)
  return f'tests/user_datasets.py:{first + next(i for i, l in enumerate(lines) if statement in l)}'


@pytest.mark.parametrize('function,error,message,statement', [
    ('missing_file', 'FileNotFoundError', "[Errno 2] No such file or directory: 'my_data.npz'",
     'np.load('),
    ('missing_key', 'KeyError', "'y'", 'arrays["y"]'),
    ('bad_reshape', 'ValueError', 'cannot reshape array of size 40', '.reshape('),
])
def test_an_exception_in_the_users_dataset_function_is_one_line_naming_the_field_and_line(
    tmp_path, function, error, message, statement):
  result = mbx_train('--config', 'configs/mnist1d_cnn.py', '--workdir', str(tmp_path / 'run'),
                     f'data.name=tests/user_datasets.py:{function}')
  assert_one_line_error(result, f'data.name=tests/user_datasets.py:{function}: {error} at '
                        f'{_line_of(getattr(user_datasets, function), statement)}: {message}')
  assert not (tmp_path / 'run').exists()


def test_mbx_debug_prints_the_traceback_of_an_exception_in_the_users_code(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'train', '--config', 'configs/mnist1d_cnn.py',
       '--workdir', str(tmp_path / 'run'), 'data.name=tests/user_datasets.py:missing_key'],
      cwd=REPO, env=dict(os.environ, MBX_DEBUG='1'), capture_output=True, text=True,
      timeout=120)
  line = _line_of(user_datasets.missing_key, 'arrays["y"]').rpartition(':')[2]
  assert result.returncode != 0 and 'Traceback (most recent call last)' in result.stderr
  assert f'user_datasets.py", line {line}, in missing_key' in result.stderr, result.stderr
  assert not (tmp_path / 'run').exists()


def test_an_exception_names_the_field_of_the_function_that_raised_it():
  path = REPO / 'tests' / 'user_datasets.py'  # one file behind two fields
  preprocess = registry.resolve(f'{path}:scale_inputs', {}, 'data.preprocess', 'function')
  registry.resolve(f'{path}:make_regression', {}, 'data.name', 'function')
  with pytest.raises(KeyError) as info:
    preprocess({'targets': [0]})
  line = _line_of(user_datasets.scale_inputs, 'batch["inputs"]').rpartition(':')[2]
  assert registry.user_code_error(info.value).startswith(
      f"data.preprocess={path}:scale_inputs: KeyError at "), registry.user_code_error(info.value)
  assert registry.user_code_error(info.value).endswith(f"user_datasets.py:{line}: 'inputs'")
  with pytest.raises(KeyError) as info:
    {}['inputs']  # pylint: disable=pointless-statement  (raised here, in no user code)
  assert registry.user_code_error(info.value) is None


@pytest.mark.parametrize('function,fragments', [
    ('float_labels', ('targets are float32,', 'y.astype(int)', 'task.name=regression')),
    ('one_hot_labels', ('float32 of shape (3,)', 'one-hot', 'y.argmax(-1)',
                        'task.name=regression')),
])
def test_float_or_one_hot_labels_for_classification_are_said_before_the_model(
    tmp_path, capsys, function, fragments):
  with pytest.raises(SystemExit) as exit_info:  # cnn1d needs num_classes, which floats lack
    cli.main(['train', '--config', str(REPO / 'configs' / 'mnist1d_cnn.py'),
              '--workdir', str(tmp_path / 'run'), f'data.name=user_datasets:{function}'])
  error = capsys.readouterr().err.strip()
  assert exit_info.value.code == 2 and len(error.splitlines()) == 1, error
  assert error.startswith('mbx train: error: task.name=classification:'), error
  assert 'num_classes' not in error and all(f in error for f in fragments), error
  assert not (tmp_path / 'run').exists()


def _replace(values: dict, path: str, value) -> dict:
  section, _, key = path.partition('.')
  if key:
    values[section][key] = value
  else:
    values[section] = value
  return values


@pytest.mark.parametrize('change,fragment', [
    (lambda v: _replace(v, 'model.options', {'__class__': 'os.system'}),
     'model.options.__class__ is not an option'),
    (lambda v: _replace(v, 'model.options', {'num_classes': '10'}),
     "model.options.num_classes='10'"),
    (lambda v: _replace(v, 'name', {'module': 'os'}), "name={'module': 'os'}: expected a string"),
    (lambda v: None, 'config=None: expected a mapping of sections'),
    (lambda v: _replace(v, 'train.batch_size', '64'), "train.batch_size='64': expected an integer"),
    (lambda v: _replace(v, 'optim', ['adam']), "optim=['adam']: expected a mapping of fields"),
], ids=['unknown-option', 'num-classes-string', 'name-dict', 'null', 'string-for-int',
        'list-section'])
def test_a_recorded_config_json_of_the_wrong_shape_is_one_line_naming_the_field(
    tmp_path, capsys, change, fragment):
  run = tmp_path / 'recorded'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps(change(config_lib.to_dict(tiny_config()))))
  with pytest.raises(ConfigError) as info:
    mbx.load_run(run)
  assert f'{run / "config.json"}: ' in str(info.value) and fragment in str(info.value)
  assert len(str(info.value).splitlines()) == 1
  train_from = ['--config', str(run / 'config.json'), '--workdir', str(tmp_path / 'new')]
  resume_into = ['--config', str(REPO / 'configs' / 'mnist1d_cnn.py'), '--workdir', str(run)]
  for args, expected in ((train_from, fragment), (resume_into, str(run))):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(['train', *args])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1, error
    assert expected in error, error
  assert not (tmp_path / 'new').exists() and sorted(os.listdir(run)) == ['config.json']


def test_loading_a_run_imports_nothing_its_config_names(tmp_path):
  marker = tmp_path / 'imported'
  (tmp_path / 'model_file.py').write_text(f'import pathlib\npathlib.Path({str(marker)!r}).touch()\n')
  config = tiny_config(model=dict(name=f'{tmp_path / "model_file.py"}:Net',
                                  options={'__class__': 'os.system'}))
  run = tmp_path / 'recorded'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps(config_lib.to_dict(config)))
  loaded = mbx.load_run(run)
  assert not marker.exists()
  with pytest.raises(ConfigError, match='model_file.py:Net'):
    loaded.build_model()  # building the model is what imports it
  assert marker.exists()


def test_load_run_checks_the_recorded_config_like_a_new_one(tmp_path):
  run = mbx.train(tiny_config(train=dict(duration='2 steps', checkpoint_every=None)), tmp_path,
                  quiet=True)
  config = json.loads((run.workdir / 'config.json').read_text())
  config['optim']['learning_rate'] = -1.0
  (run.workdir / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ConfigError, match='optim.learning_rate=-1.0'):
    mbx.load_run(tmp_path)


def test_a_truncated_metrics_line_is_skipped_with_a_warning_and_later_rows_kept(tmp_path):
  run = mbx.train(tiny_config(), tmp_path, quiet=True)
  path = run.workdir / 'train_metrics.jsonl'
  lines = path.read_text().splitlines()
  lines[1] = lines[1][:20]
  path.write_text('\n'.join(lines) + '\n')
  with pytest.warns(UserWarning, match=r'train_metrics.jsonl:2: not a JSON row'):
    rows = mbx.load_run(tmp_path).train_metrics
  assert list(rows['step']) == [5, 15, 20]


def test_a_truncated_status_is_a_clear_error_and_training_rewrites_it(tmp_path):
  config = tiny_config(train=dict(duration='10 steps'))
  mbx.train(config, tmp_path, quiet=True)
  (tmp_path / 'status.json').write_text('{"status": "do')
  with pytest.raises(ConfigError, match=r'status.json: not valid JSON'):
    mbx.load_run(tmp_path)
  with pytest.warns(UserWarning, match='status.json: not valid JSON'):
    run = mbx.train(config, tmp_path, quiet=True)
  assert run.status['status'] == 'done' and run.status['step'] == 10


def test_a_second_train_on_the_same_workdir_exits_at_once_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  args = ['--config', 'configs/mnist1d_cnn.py', '--workdir', str(workdir), '--quiet',
          'train.duration=20000 steps']
  first = subprocess.Popen([sys.executable, '-m', 'mbx.cli', 'train', *args], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 60
    while not (workdir / 'train_metrics.jsonl').exists() and time.time() < deadline:
      assert first.poll() is None, first.communicate()[1][-2000:]
      time.sleep(0.2)
    second = mbx_train(*args)
    assert first.poll() is None  # it did not wait for the holder to finish (no wall-clock bound)
    assert_one_line_error(second, str(workdir), f'PID {first.pid}', 'another process')
  finally:
    out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-2000:]
  run = mbx.load_run(workdir)
  assert run.status['status'] == 'done' and run.status['step'] == 20000
  steps = run.train_metrics['step'].tolist()
  assert steps == sorted(set(steps))  # no duplicated rows from a second writer


def _mbx(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'mbx.cli', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_an_analysis_given_the_wrong_kind_of_directory_says_which_it_needs(tmp_path):
  """A run where a sweep belongs and the other way round: one line, no traceback."""
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps(mbx.config.to_dict(tiny_config())))
  sweep_dir = tmp_path / 'sweep'
  sweep = SweepConfig(base=tiny_config(), search=(SearchSpace('adam', (1e-3, 1e-2)),),
                      batch_sizes=(16,))
  runner.write_spec(sweep_dir, sweep, expand(sweep))
  trial = runner.trial_dir(sweep_dir, expand(sweep)[0])
  trial.mkdir(parents=True)
  (trial / 'config.json').write_text((run / 'config.json').read_text())
  assert_one_line_error(_mbx('analyze', 'cbs', str(run)), f'{run} is a run directory',
                        'mbx analyze cbs needs a sweep directory (one with sweep.json)',
                        f'mbx analyze local-cbs {run}', f'mbx analyze sharpness {run}')
  assert_one_line_error(_mbx('analyze', 'cbs', str(trial)), f'{trial} is a run directory',
                        f'did you mean mbx analyze cbs {sweep_dir}, the sweep it belongs to?')
  for command in (['sharpness', str(sweep_dir)], ['landscape', str(sweep_dir)],
                  ['local-cbs', str(sweep_dir), '--step', '10'],
                  ['interpolate', str(run), str(sweep_dir)]):
    assert_one_line_error(_mbx('analyze', *command), f'{sweep_dir} is a sweep directory',
                          f'mbx analyze {command[0]} needs a run directory (one with '
                          'config.json)', f'mbx analyze cbs {sweep_dir}')
  assert_one_line_error(_mbx('analyze', 'sharpness', str(tmp_path)),
                        'neither a run directory (config.json) nor a sweep directory')
  assert_one_line_error(_mbx('report', str(tmp_path / 'nowhere')), 'nowhere: no such directory')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['run', 'sweep']  # nothing written
