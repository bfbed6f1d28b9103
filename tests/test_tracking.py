"""Experiment tracking: TensorBoard event files that hold exactly the JSONL's values, and the
run records a new user reads (merged metrics, quiet restores)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
from tbparse import SummaryReader

import mbx
from mbx.training.records import read_jsonl

from helpers import REPO, read_wandb_history, tiny_config


def _jsonl_scalars(run_dir) -> pd.DataFrame:
  rows = []
  for log in ('train', 'eval'):
    for row in read_jsonl(run_dir / f'{log}_metrics.jsonl'):
      for key, value in row.items():
        if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
          rows.append({'step': row['step'], 'tag': f'{log}/{key}', 'value': float(value)})
  return pd.DataFrame(rows).sort_values(['tag', 'step']).reset_index(drop=True)


def _event_scalars(run_dir) -> pd.DataFrame:
  reader = SummaryReader(str(run_dir / 'tensorboard'))
  return reader.scalars.sort_values(['tag', 'step']).reset_index(drop=True)


def _assert_same(run_dir) -> None:
  expected, events = _jsonl_scalars(run_dir), _event_scalars(run_dir)
  assert list(events['tag']) == list(expected['tag'])
  assert list(events['step']) == list(expected['step'])
  # TensorBoard stores float32
  np.testing.assert_allclose(events['value'], expected['value'].astype(np.float32), rtol=1e-6)


def test_mbx_train_writes_tensorboard_events_with_the_jsonl_values(tmp_path, session_data_dir):
  run_dir = tmp_path / 'run'
  result = subprocess.run([sys.executable, '-m', 'mbx.cli', 'train', '--config',
                           'configs/mnist1d_cnn.py', '--workdir', str(run_dir), '--quiet',
                           'train.duration=40 steps', 'train.log_every=10 steps',
                           'train.eval_every=20 steps', 'train.noise_scale=true'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_same(run_dir)
  tags = set(_event_scalars(run_dir)['tag'])
  assert {'train/loss', 'train/learning_rate', 'train/batch_size', 'train/b_simple',
          'eval/eval_accuracy'} <= tags
  text = SummaryReader(str(run_dir / 'tensorboard')).text
  assert json.loads(text.value[0].strip('`\n'))['train']['duration'] == '40 steps'
  assert 'read only' not in result.stderr  # Orbax's notices are silenced


def test_a_resumed_run_rebuilds_its_events_from_the_rows_it_kept(tmp_path, session_data_dir):
  """A run that died after checkpoint 10 with rows logged up to 20: on resume those rows are
  redone, and the event files hold each step once, with the values of the final JSONL."""
  config = tiny_config()
  run_dir = tmp_path / 'run'
  mbx.train(config, run_dir, quiet=True)
  shutil.rmtree(run_dir / 'checkpoints' / '20')
  (run_dir / 'status.json').write_text(json.dumps({'status': 'running', 'step': 10}))
  rows_before = read_jsonl(run_dir / 'train_metrics.jsonl')
  assert [r['step'] for r in rows_before] == [5, 10, 15, 20]
  run = mbx.train(config, run_dir, quiet=True)
  assert run.status['status'] == 'done'
  _assert_same(run_dir)
  events = _event_scalars(run_dir)
  assert list(events[events.tag == 'train/loss'].step) == [5, 10, 15, 20]
  assert len(list((run_dir / 'tensorboard').iterdir())) == 1  # the rebuilt file alone


def test_no_tensorboard_writes_none(tmp_path, session_data_dir):
  run_dir = tmp_path / 'run'
  mbx.train(tiny_config(), run_dir, quiet=True, trackers=())
  assert not (run_dir / 'tensorboard').exists()


def test_merged_metrics_know_where_every_row_is_in_the_stream(tmp_path, session_data_dir):
  run = mbx.train(tiny_config(), tmp_path / 'run', quiet=True)
  metrics = run.metrics
  assert list(metrics.step) == [0, 5, 10, 15, 20]  # eval at 0, 10, 20; train logs at 5..20
  assert not metrics[['examples_seen', 'epoch', 'wall_time']].isna().any().any()
  assert list(metrics.examples_seen) == [0, 320, 640, 960, 1280]


def test_restoring_a_checkpoint_prints_no_orbax_notices(tmp_path, session_data_dir):
  mbx.train(tiny_config(), tmp_path / 'run', quiet=True)
  code = (f'import mbx; run = mbx.load_run({str(tmp_path / "run")!r}); run.restore(); '
          'print(run.checkpoint_steps)')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[10, 20]'
  assert 'read only' not in result.stderr and 'WARNING' not in result.stderr


def _jsonl_series(run_dir) -> dict[str, list[tuple[int, float]]]:
  series: dict[str, list[tuple[int, float]]] = {}
  for _, row in _jsonl_scalars(run_dir).iterrows():
    series.setdefault(row['tag'], []).append((int(row['step']), row['value']))
  return series


def test_wandb_offline_and_mlflow_file_store_receive_every_row(tmp_path, session_data_dir,
                                                               monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
  run_dir = tmp_path / 'run'
  mbx.train(tiny_config(), run_dir, quiet=True, trackers=('wandb', 'mlflow'))
  expected = _jsonl_series(run_dir)
  assert not (run_dir / 'tensorboard').exists()
  ids = json.loads((run_dir / 'trackers.json').read_text())

  (wandb_file,) = (run_dir / 'wandb').glob(f'offline-run-*-{ids["wandb"]}/run-*.wandb')
  logged: dict[str, list[tuple[int, float]]] = {}
  for row in read_wandb_history(wandb_file):
    for key, value in row.items():
      if not key.startswith('_'):
        logged.setdefault(key, []).append((int(row['_step']), value))
  assert logged.keys() == expected.keys()
  for tag, points in expected.items():
    np.testing.assert_allclose([v for _, v in logged[tag]], [v for _, v in points], rtol=1e-6)
    assert [s for s, _ in logged[tag]] == [s for s, _ in points]

  from mlflow.tracking import MlflowClient
  client = MlflowClient(tracking_uri=(run_dir / 'mlruns').absolute().as_uri())
  run = client.get_run(ids['mlflow'])
  assert run.info.status == 'FINISHED' and run.data.params['optim.name'] == 'adam'
  for tag, points in expected.items():
    if not all(np.isfinite(v) for _, v in points):
      continue
    history = sorted((m.step, m.value) for m in client.get_metric_history(ids['mlflow'], tag))
    assert [s for s, _ in history] == [s for s, _ in points]
    np.testing.assert_allclose([v for _, v in history], [v for _, v in points], rtol=1e-6)


def test_an_unknown_or_missing_tracker_fails_before_anything_is_written(tmp_path):
  for trackers, message in ((('tensorbord',), "unknown 'tensorbord'; did you mean tensorboard?"),
                            (('neptune',), "unknown 'neptune'; allowed: tensorboard, wandb")):
    try:
      mbx.train(tiny_config(), tmp_path / 'run', quiet=True, trackers=trackers)
    except mbx.ConfigError as error:
      assert message in str(error)
    else:
      raise AssertionError('no error')
  assert not (tmp_path / 'run').exists()
