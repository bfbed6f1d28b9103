"""Every invalid field is refused early, naming the field, the value and the closest valid
names (or, when none is close, what is allowed)."""
from __future__ import annotations

import json

import pytest

import mbx
from mbx.config import ConfigError, apply_overrides, from_dict, parse_duration, to_dict
from mbx.training.plan import make_plan
from mbx.training.workload import resolve

from helpers import assert_one_line_error, mbx_cli, mbx_train, tiny_config

BASE = tiny_config()


@pytest.mark.parametrize('override, fragments', [
    ('train.batchsize=3', ['unknown field train.batchsize; did you mean train.batch_size?']),
    ('train.lr=3', ['unknown field train.lr; allowed: accumulation, ', 'batch_size']),
    ('train.learning_rate=3', ['train.learning_rate', 'did you mean optim.learning_rate?']),
    ('trian.batch_size=3', ['unknown config section trian in trian.batch_size',
                            'did you mean train?']),
    ('train.batch_size=0', ['train.batch_size=0', 'positive integer']),
    ('train.batch_size=-4', ['train.batch_size=-4', 'positive integer']),
    ('train.batch_size=2.5', ['train.batch_size=2.5', 'integer']),
    ('train.micro_batch_size=48', ['train.micro_batch_size=48', 'divide', '64']),
    ('data.name=imagenet', ["data.name='imagenet'", 'did you mean imagenet2012?']),
    ('data.name=nosuchset', ["data.name='nosuchset'", 'allowed: mnist1d, ', 'cifar10']),
    ('model.name=resnet9', ["model.name='resnet9'", 'did you mean', 'resnet18', 'resnet50']),
    ('model.name=nosuchnet', ["model.name='nosuchnet'", 'allowed: mlp, cnn1d, ']),
    ('model.option.channels=3', ['unknown field model.option; did you mean model.options?']),
    ('model.options.chanels=3', ['model.options.chanels', 'did you mean model.options.channels?']),
    ('task.name=clasification', ["task.name='clasification'", 'did you mean classification?']),
    ('model.options.channels=wide', ['model.options.channels', 'wide']),
    ('model.dtype=float16', ['model.dtype', 'float16', 'bfloat16']),
    ('optim.name=adagrad', ['optim.name', 'adagrad', 'lars', 'lamb']),
    ('optim.name=adamm', ["optim.name='adamm': did you mean adam or adamw?"]),
    ('optim.schedule=exponential', ['optim.schedule', 'exponential', 'cosine']),
    ('optim.schedule=cosin', ["optim.schedule='cosin': did you mean cosine?"]),
    ('optim.learning_rate=-0.1', ['optim.learning_rate=-0.1', 'positive']),
    ('optim.learning_rate=0', ['optim.learning_rate=0', 'positive']),
    ('optim.lr_scaling=cubic', ['optim.lr_scaling', 'linear', 'sqrt']),
    ('optim.momentum=1.0', ['optim.momentum', '[0, 1)']),
    ('train.duration=10 parsecs', ['train.duration', 'parsecs', 'epochs']),
    ('train.duration=-3 steps', ['train.duration', '-3 steps']),
    ('train.eval_every=0 steps', ['train.eval_every', 'positive']),
    ('train.accumulation=vmap', ['train.accumulation', 'unrolled', 'scan']),
    ('train.target_metric=eval_f1', ['train.target_value', 'train.target_metric']),
    ('train.stop_at_target=true', ['train.stop_at_target', 'target_metric']),
    ('train.probe_groups=1', ['train.probe_groups', '>= 2']),
    ('data.placement=gpu', ['data.placement', 'device', 'host']),
])
def test_invalid_field_is_named(override, fragments):
  with pytest.raises(ConfigError) as error:
    resolve(apply_overrides(BASE, [override]))  # fields, then names and their combination
  for fragment in fragments:
    assert fragment in str(error.value), (fragment, str(error.value))


def test_step_schedule_milestones_must_increase():
  config = tiny_config(optim=dict(schedule='step', milestones=(60.0, 30.0)))
  with pytest.raises(ConfigError, match=r'optim\.milestones.*strictly increasing'):
    mbx.validate(config)


def test_batch_schedule_needs_epoch_units():
  config = tiny_config(train=dict(batch_size_milestones=(1.0,), batch_size_factor=2))
  with pytest.raises(ConfigError, match=r'train\.duration.*epochs, examples or tokens'):
    mbx.validate(config)


@pytest.mark.parametrize('fields, devices, fragments', [
    (dict(batch_size=5000), 1, ['train.batch_size', '5000', '4000 training examples']),
    (dict(batch_size=12), 8, ['train.batch_size', '12', '8 devices']),
    (dict(batch_size=64, micro_batch_size=4), 8, ['train.micro_batch_size=4', '8 devices']),
    (dict(batch_size=1, noise_scale=True), 1, ['train.probe_groups', 'batch_size >= 2']),
])
def test_plan_errors_name_the_field(fields, devices, fragments):
  config = tiny_config(train=fields)
  workload = resolve(config)
  with pytest.raises(ConfigError) as error:
    make_plan(config, devices, 4000, probe_groups=workload.probe_groups)
  for fragment in fragments:
    assert fragment in str(error.value)


def test_overrides_parse_types_and_round_trip():
  config = apply_overrides(BASE, [
      'optim.learning_rate=3e-4', 'train.duration=2 epochs', 'optim.schedule=step',
      'optim.milestones=1,2', 'train.eval_on_train=true', 'model.options.channels=8',
      'train.max_loss=none'])
  assert config.optim.learning_rate == pytest.approx(3e-4)
  assert config.train.duration == '2 epochs'
  assert config.optim.milestones == (1.0, 2.0)
  assert config.train.eval_on_train is True
  assert config.model.options == {'channels': 8}
  mbx.validate(config)
  assert from_dict(json.loads(json.dumps(to_dict(config)))) == config


def test_config_is_frozen():
  with pytest.raises(Exception):
    BASE.train.batch_size = 3  # type: ignore[misc]


def test_parse_duration():
  assert parse_duration('8000 steps', 'f').to_steps(100, 4000) == 8000
  assert parse_duration('2 epochs', 'f').to_steps(100, 4000) == 80
  assert parse_duration('1e4 examples', 'f').to_examples(100, 4000) == 10000
  assert parse_duration('1 epoch', 'f').unit == 'epochs'


def test_cli_rejects_bad_field_before_compiling_and_keeps_the_run(tmp_path):
  """The CLI exits 2 before the training stack loads, and an existing run directory is
  untouched."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{"sentinel": 1}')
  result = mbx_cli('train', '--config', 'configs/mnist1d_cnn.py', '--workdir', str(workdir),
                   'optim.name=adagrad')
  assert_one_line_error(result, 'optim.name', 'adagrad')
  assert result.imported == []
  assert (workdir / 'config.json').read_text() == '{"sentinel": 1}'
  assert sorted(p.name for p in workdir.iterdir()) == ['config.json']


def test_refuses_to_resume_a_different_config(tmp_path):
  mbx.train(tiny_config(train=dict(duration='2 steps', checkpoint_every=None)), tmp_path,
            quiet=True)
  before = (tmp_path / 'config.json').read_text()
  with pytest.raises(ConfigError, match='optim.learning_rate'):
    mbx.train(tiny_config(train=dict(duration='2 steps', checkpoint_every=None),
                          optim=dict(learning_rate=0.5)), tmp_path, quiet=True)
  assert (tmp_path / 'config.json').read_text() == before


def test_config_flags_are_overrides_in_either_spelling():
  from mbx.cli import config_flags_as_overrides
  assert config_flags_as_overrides(
      ['train', '--config', 'c.py', '--config.train.batch_size=32',
       '--config.optim.learning_rate', '0.1', 'model.name=mlp']) == [
           'train', '--config', 'c.py', 'model.name=mlp', 'train.batch_size=32',
           'optim.learning_rate=0.1']
  launched = ['launch', '-n', '2', '--', 'mbx', 'train', '--config.train.seed=1']
  assert config_flags_as_overrides(launched) == launched  # left to the launched mbx
  with pytest.raises(mbx.ConfigError, match='--config.train.seed: no value'):
    config_flags_as_overrides(['train', '--config.train.seed'])


def test_mbx_train_accepts_the_ml_collections_spelling_and_a_run_config_json(tmp_path):
  first = mbx_train('--config', 'configs/mnist1d_mlp.py', '--workdir', str(tmp_path / 'a'),
                    '--quiet', '--config.train.duration=10 steps', '--config.train.eval_every',
                    '10 steps', 'train.log_every=5 steps', 'train.checkpoint_every=10 steps')
  assert first.returncode == 0, first.stderr
  saved = json.loads((tmp_path / 'a' / 'config.json').read_text())
  assert saved['train']['duration'] == '10 steps' and saved['train']['eval_every'] == '10 steps'
  again = mbx_train('--config', str(tmp_path / 'a' / 'config.json'), '--workdir',
                    str(tmp_path / 'b'), '--quiet')
  assert again.returncode == 0, again.stderr
  assert json.loads((tmp_path / 'b' / 'config.json').read_text()) == saved


def test_a_field_at_its_default_does_not_enter_the_hash():
  """Runs and sweeps keep their directories when mbx adds a config field with a default."""
  config = mbx.Config(train=mbx.TrainConfig(batch_size=64))
  same = mbx.apply_overrides(config, ['train.seed=0', 'train.noise_scale=false'])
  assert mbx.config.config_hash(same) == mbx.config.config_hash(config)
  assert mbx.config.identity(config) == {'train': {'batch_size': 64}}
  other = mbx.apply_overrides(config, ['train.seed=1'])
  assert mbx.config.config_hash(other) != mbx.config.config_hash(config)
