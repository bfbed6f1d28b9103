"""The language-model workload end to end: token units, bits per character, exact accumulation,
8 devices = 1, bitwise resume, the tfds text datasets, and bad input before compiling."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import mbx
from mbx.data import text
from mbx.training.plan import make_plan

from helpers import REPO, assert_one_line_error, mbx_cli, mbx_train, run_python, tiny_lm_config


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """The first 20,000 characters of the KJV corpus, as a user's text file."""
  path = tmp_path_factory.mktemp('corpus') / 'kjv_head.txt'
  path.write_text(text.kjv_text()[:20_000], encoding='utf-8')
  return path


def _leaves(run):
  return [np.asarray(x) for x in jax.tree.leaves(run.params())]


# ----------------------------------------------------------------- units and metrics
def test_token_durations_are_divided_by_the_window_length(corpus):
  config = tiny_lm_config(corpus, train=dict(duration='2560 tokens', eval_every='640 tokens',
                                             log_every='128 tokens', checkpoint_every=None),
                          optim=dict(warmup='512 tokens'))
  plan = make_plan(config, 1, 1000, tokens_per_example=16)
  assert plan.total_steps == 20 and plan.tokens_per_example == 16  # 2560 / (8 x 16)
  assert plan.eval_steps == {0, 5, 10, 15, 20} and plan.log_steps == set(range(1, 21))
  from mbx.optim import learning_rate_schedule  # pylint: disable=import-outside-toplevel
  schedule = learning_rate_schedule(config.optim, batch_size=8, examples_per_epoch=1000,
                                    total_examples=160, tokens_per_example=16)
  assert float(schedule(16)) == pytest.approx(0.5 * 3e-3)  # warmup: 512 tokens = 32 windows
  assert float(schedule(32)) == pytest.approx(3e-3)
  with pytest.raises(mbx.ConfigError, match='train.duration'):
    mbx.validate(dataclasses.replace(config, train=dataclasses.replace(
        config.train, duration='100 tokenz')))


def test_a_run_logs_tokens_and_reports_bits_per_character(corpus, tmp_path):
  config = tiny_lm_config(corpus, train=dict(duration='2560 tokens', eval_every='1280 tokens',
                                             log_every='640 tokens', checkpoint_every=None))
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  rows = run.train_metrics
  assert rows['step'].tolist() == [5, 10, 15, 20]
  assert (rows['tokens_seen'] == rows['examples_seen'] * 16).all()
  assert (rows['batch_tokens'] == 8 * 16).all()
  status = run.status
  assert status['tokens_seen'] == 2560 and status['step'] == 20
  evals = run.eval_metrics
  assert evals['step'].tolist() == [0, 10, 20]
  np.testing.assert_allclose(evals['eval_bits_per_character'], evals['eval_loss'] / math.log(2),
                             rtol=1e-12)
  assert status['eval_bits_per_character'] == pytest.approx(status['eval_loss'] / math.log(2))
  assert evals['eval_bits_per_character'].iloc[-1] < evals['eval_bits_per_character'].iloc[0]
  # Eval scores every target character of the validation block once: 2,000 - 1 of them.
  assert status['eval_examples'] == math.ceil(1999 / 16)


def test_byte_tokens_report_bits_per_byte_and_per_character(tmp_path):
  path = tmp_path / 'accents.txt'
  path.write_text('Æther — naïve café, déjà vu; 3×4 ≠ 11. ' * 60, encoding='utf-8')
  config = tiny_lm_config(path, data=dict(options={'path': str(path), 'seq_len': 16,
                                                   'tokenizer': 'byte',
                                                   'fractions': [0.8, 0.1, 0.1]}),
                          train=dict(duration='4 steps', eval_every='4 steps',
                                     checkpoint_every=None))
  status = mbx.train(config, tmp_path / 'run', quiet=True).status
  dataset = text.text_file(path, seq_len=16, tokenizer='byte', fractions=(0.8, 0.1, 0.1))
  bits_per_byte = status['eval_loss'] / math.log(2)
  assert status['eval_bits_per_byte'] == pytest.approx(bits_per_byte)
  chars = dataset.target_chars['validation']
  assert chars < dataset.target_tokens['validation']  # multi-byte characters
  assert status['eval_bits_per_character'] == pytest.approx(
      bits_per_byte * dataset.target_tokens['validation'] / chars)


def test_the_train_windows_order_depends_only_on_seed_and_epoch(corpus):
  from mbx.data.example_order import epoch_permutation  # pylint: disable=import-outside-toplevel
  dataset = text.text_file(corpus, seq_len=16, fractions=(0.8, 0.1, 0.1))
  windows = dataset.arrays('train')['inputs']
  order = lambda seed, epoch: windows[epoch_permutation(seed, epoch, len(windows))]
  np.testing.assert_array_equal(order(3, 1), order(3, 1))
  assert not np.array_equal(order(3, 1), order(3, 2))
  assert not np.array_equal(order(3, 1), order(4, 1))
  # Every window once per epoch.
  np.testing.assert_array_equal(np.sort(epoch_permutation(3, 1, len(windows))),
                                np.arange(len(windows)))


# ----------------------------------------------------------------- exactness
@pytest.mark.parametrize('accumulation', ['unrolled', 'scan'])
def test_gradient_accumulation_is_exact_for_the_language_model(corpus, tmp_path, accumulation):
  # Momentum SGD, not Adam: the key projection's bias has a zero true gradient (softmax ignores
  # a constant added to every key's score), and Adam turns its rounding noise into lr-sized
  # steps, so only an update linear in the gradient shows whether accumulation is exact.
  def run(micro_batch_size, name):
    config = tiny_lm_config(corpus, train=dict(batch_size=32, micro_batch_size=micro_batch_size,
                                               accumulation=accumulation, duration='4 steps',
                                               log_every='1 steps', checkpoint_every=None),
                            optim=dict(name='momentum', learning_rate=0.3, weight_decay=0.0))
    return mbx.train(config, tmp_path / name, quiet=True)
  whole, accumulated = run(None, 'whole'), run(8, 'accumulated')
  for a, b in zip(_leaves(accumulated), _leaves(whole), strict=True):
    assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-3)
  np.testing.assert_allclose(accumulated.train_metrics['loss'], whole.train_metrics['loss'],
                             rtol=1e-5)


LM_TRAIN_AND_DUMP = '''
  import json, sys, numpy as np, jax
  import mbx
  sys.path.insert(0, 'tests')
  from helpers import tiny_lm_config
  config = tiny_lm_config({path!r}, train=dict(batch_size=16, duration='5 steps',
                          log_every='1 steps', eval_every='5 steps', checkpoint_every=None,
                          noise_scale=True),
                          optim=dict(name='momentum', learning_rate=0.3, weight_decay=0.0))
  run = mbx.train(config, {workdir!r}, quiet=True)
  print(json.dumps({{'devices': jax.device_count(),
                    'params': [np.asarray(p).tolist() for p in jax.tree.leaves(run.params())],
                    'loss': run.train_metrics['loss'].tolist(),
                    'eval_loss': float(run.status['eval_loss'])}}))
'''


@pytest.mark.slow
def test_eight_devices_train_the_language_model_as_one_does(corpus, tmp_path):
  # Momentum SGD for the reason given in the accumulation test above.
  results = {devices: run_python(LM_TRAIN_AND_DUMP.format(
      path=str(corpus), workdir=str(tmp_path / f'd{devices}')), devices=devices)
             for devices in (1, 8)}
  assert results[8]['devices'] == 8
  for a, b in zip(results[8]['params'], results[1]['params'], strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-3)
  np.testing.assert_allclose(results[8]['loss'], results[1]['loss'], rtol=1e-5)
  assert results[8]['eval_loss'] == pytest.approx(results[1]['eval_loss'], rel=1e-5)


def test_a_language_model_checkpoint_resumes_bitwise(corpus, tmp_path):
  """A run stopped at its step-10 checkpoint and re-run with the 20-step config ends bitwise
  equal to the run that never stopped (warmup in tokens, dropout on: the rng is restored)."""
  config = tiny_lm_config(corpus, model=dict(options={'num_layers': 1, 'width': 32,
                                                      'num_heads': 2, 'max_len': 16,
                                                      'dropout': 0.1}),
                          optim=dict(warmup='640 tokens'))
  full = mbx.train(config, tmp_path / 'full', quiet=True)
  short = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                duration='10 steps'))
  workdir = tmp_path / 'resumed'
  mbx.train(short, workdir, quiet=True)
  (workdir / 'config.json').write_text((tmp_path / 'full' / 'config.json').read_text())
  (workdir / 'status.json').write_text('{"status": "running", "step": 10}')
  resumed = mbx.train(config, workdir, quiet=True)
  assert resumed.status['status'] == 'done' and resumed.status['step'] == 20
  for a, b in zip(_leaves(resumed), _leaves(full), strict=True):
    np.testing.assert_array_equal(a, b)
  assert resumed.train_metrics['step'].tolist() == full.train_metrics['step'].tolist()
  np.testing.assert_array_equal(resumed.eval_metrics['eval_loss'], full.eval_metrics['eval_loss'])


# ----------------------------------------------------------------- tfds text datasets
def _prepare_stand_in(name: str, data_dir, splits: dict[str, list[str]]) -> None:
  """Writes `name` into data_dir as tfds would (array_record), from local texts: the catalog
  builder then reads it back as a prepared dataset, so nothing is downloaded."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  version = tfds.builder_cls(name).VERSION

  class StandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = version

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(texts) for split, texts in splits.items()}

    def _generate_examples(self, texts):
      for i, value in enumerate(texts):
        yield i, {'text': value}

  StandIn.name = name
  from tensorflow_datasets.core import file_adapters  # pylint: disable=import-outside-toplevel
  StandIn(data_dir=str(data_dir)).download_and_prepare(
      file_format=file_adapters.FileFormat.ARRAY_RECORD)


def test_tiny_shakespeare_config_trains_from_a_prepared_data_dir(tmp_path):
  corpus = text.kjv_text()
  splits = {'train': [corpus[:12_000]], 'validation': [corpus[12_000:14_000]],
            'test': [corpus[14_000:16_000]]}
  _prepare_stand_in('tiny_shakespeare', tmp_path / 'tfds', splits)
  overrides = [f'data.data_dir={tmp_path / "tfds"}', 'train.duration=4 steps', 'optim.warmup=2 steps',
               'train.eval_every=4 steps', 'train.checkpoint_every=none',
               'model.options.num_layers=1', 'model.options.width=32',
               'model.options.num_heads=2', 'train.batch_size=8']
  config = mbx.load_config(REPO / 'configs/lm_tiny_shakespeare.py', overrides)
  dataset = mbx.resolve(config).dataset
  assert isinstance(dataset, text.TextDataset) and dataset.tokenizer.kind == 'char'
  seq_len = dataset.seq_len
  assert dataset.split_tokens == {'train': 12_000, 'validation': 2_000, 'test': 2_000}
  assert dataset.num_examples('train') == (12_000 - 1) // seq_len
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  assert run.status['status'] == 'done'
  assert run.status['eval_examples'] == math.ceil(1999 / seq_len)
  assert math.isfinite(run.status['eval_bits_per_character'])


def test_lm1b_takes_validation_from_the_first_half_of_test_and_caps_characters(tmp_path):
  sentences = [f'Sentence number {i} is here, naïvely.' for i in range(40)]
  _prepare_stand_in('lm1b', tmp_path / 'tfds', {'train': sentences * 5, 'test': sentences})
  config = mbx.load_config(REPO / 'configs/lm_lm1b.py', [f'data.data_dir={tmp_path / "tfds"}',
                                                          'data.options.seq_len=8',
                                                          'data.options.max_characters=3000'])
  dataset = mbx.resolve(config).dataset
  assert dataset.tokenizer.kind == 'byte' and dataset.vocab_size == 256
  texts = text.tfds_texts('lm1b', str(tmp_path / 'tfds'), False, 3000)
  validation, test = texts['validation'].split('\n'), texts['test'].split('\n')
  assert len(validation) == len(test) == 20 and sorted(validation + test) == sorted(sentences)
  assert len(texts['train']) == 3000 and texts['train'].split('\n')[0] in sentences


def test_an_unprepared_tiny_shakespeare_is_one_line_with_the_prepare_command(tmp_path):
  result = mbx_train('--config', 'configs/lm_tiny_shakespeare.py', '--workdir',
                      str(tmp_path / 'run'), f'data.data_dir={tmp_path / "empty"}')
  assert_one_line_error(result, "'tiny_shakespeare' is not prepared", 'tfds build tiny_shakespeare')
  assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------- bad input
def _bad_inputs(tmp_path):
  small = tmp_path / 'small.txt'
  small.write_text('a short text of forty-odd characters only.\n', encoding='utf-8')
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  options = lambda **o: 'data.options=' + json.dumps({'seq_len': 16, **o})
  return {
      'seq_len longer than the corpus': (
          [options(path=str(small), seq_len=64)], 'data.options.seq_len=64: longer than split'),
      'empty file': ([options(path=str(empty))], 'the file is empty'),
      'missing file': ([options(path=str(tmp_path / 'nope.txt'))], 'no such file'),
      'unknown tokenizer': ([options(path=str(small), tokenizer='bpe')],
                            "data.options.tokenizer='bpe': allowed values: 'char', 'byte'"),
  }


@pytest.mark.parametrize('case', ['seq_len longer than the corpus', 'empty file', 'missing file',
                                  'unknown tokenizer'])
def test_bad_text_input_is_one_line_before_anything_is_written(tmp_path, case):
  overrides, message = _bad_inputs(tmp_path)[case]
  result = mbx_cli('train', '--config', 'configs/lm_kjv_small.py', '--workdir',
                   str(tmp_path / 'run'), 'data.name=text_file', *overrides, count_compiles=True)
  assert_one_line_error(result, message)
  assert result.compiles == 0  # refused before any XLA program was compiled
  assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------- the baseline config
@pytest.mark.slow
def test_the_kjv_baseline_config_trains_from_the_cli_and_prints_bits_per_character(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mbx.cli', 'train', '--config', 'configs/lm_kjv_small.py',
       '--workdir', str(tmp_path / 'run'), 'train.duration=6 steps', 'train.eval_every=6 steps',
       'train.log_every=3 steps', 'optim.warmup=2 steps', 'model.options.num_layers=1',
       'data.options.fractions=[0.98, 0.01, 0.01]'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'validation_bits_per_character=' in result.stdout, result.stdout
  status = json.loads((tmp_path / 'run' / 'status.json').read_text())
  assert status['status'] == 'done' and status['tokens_seen'] == 6 * 32 * 64
  shutil.rmtree(tmp_path / 'run')


# ----------------------------------------------------------------- the rest of mbx on it
@pytest.mark.slow
def test_packed_trials_schedules_autobatch_and_analyses_work_on_the_language_model(
    corpus, tmp_path):
  # Packed trials equal solo ones (momentum SGD: see the accumulation test).
  base = tiny_lm_config(corpus, optim=dict(name='momentum', learning_rate=0.3,
                                           weight_decay=0.0),
                        train=dict(duration='6 steps', checkpoint_every=None,
                                   eval_every='6 steps'))
  configs = [dataclasses.replace(base, optim=dataclasses.replace(base.optim, learning_rate=lr))
             for lr in (0.1, 0.3)]
  packed = mbx.train_packed(configs, [tmp_path / 'p0', tmp_path / 'p1'], quiet=True)
  solo = mbx.train(configs[1], tmp_path / 'solo', quiet=True)
  for a, b in zip(_leaves(packed[1]), _leaves(solo), strict=True):
    assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-3)
  # A batch-size schedule with its milestone in tokens: 8 windows, then 16 after 1,280 tokens.
  schedule = tiny_lm_config(corpus, train=dict(
      duration='3840 tokens', batch_size_milestones=(1280,), batch_size_milestone_unit='tokens',
      batch_size_factor=2, log_every='1 steps', checkpoint_every=None, eval_every='3840 tokens'))
  run = mbx.train(schedule, tmp_path / 'schedule', quiet=True)
  assert run.train_metrics['batch_size'].tolist() == [8] * 10 + [16] * 10
  assert run.status['tokens_seen'] == 3840
  # AutoBatch picks a micro-batch that fits a budget, and the noise scale is measured.
  auto = tiny_lm_config(corpus, train=dict(batch_size=64, micro_batch_size='auto',
                                           autobatch_budget='4MiB', duration='4 steps',
                                           noise_scale=True, log_every='2 steps',
                                           checkpoint_every='4 steps', eval_every='4 steps'))
  run = mbx.train(auto, tmp_path / 'auto', quiet=True)
  assert run.status['status'] == 'done' and np.isfinite(run.train_metrics['b_simple']).all()
  # Sharpness and Hessian analyses on its checkpoint.
  from mbx.measure import analysis  # pylint: disable=import-outside-toplevel
  summary = analysis.sharpness_analysis(run, epsilons=(1e-3,), subspace_dim=4, maxiter=2,
                                        num_starts=2,
                                        top_k=1, trace_samples=2, density_runs=0, subset=64)
  assert summary['hessian']['top_eigenvalues']['eigenvalues'][0] > 0
  assert all(r['sharpness'] >= 0 for r in summary['sharpness']['results'])
