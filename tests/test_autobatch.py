"""AutoBatch: memory predicted from the compiled step, the largest batch under a budget, and
the micro-batch x accumulation plan of the configured global batch. Nothing here runs a step."""
from __future__ import annotations

import pytest

from mbx import cli
from mbx.config import ConfigError, validate
from mbx.training import autobatch as autobatch_lib
from mbx.training.plan import make_plan
from mbx.training.workload import resolve

from helpers import REPO, tiny_config

MIB = 2**20
BUDGET = 10 * MIB  # the split and its order window (4 epochs at B = 2000) take ~3.5 MiB of it
MLP = dict(name='mlp', options={'hidden': (100, 100), 'residual': True})


@pytest.fixture(scope='module')
def cnn_plan():
  """The CNN at global batch 2000 under 10 MiB: no single batch of 2000 fits, so the
  plan must accumulate."""
  config = tiny_config(train=dict(batch_size=2000))
  return config, autobatch_lib.autobatch(config, budget_bytes=BUDGET)


def test_predicted_memory_grows_with_batch_size():
  config = tiny_config()
  memories = [autobatch_lib.memory_of_step(config, b) for b in (16, 128, 1024)]
  totals = [m.total_bytes for m in memories]
  assert totals == sorted(totals) and len(set(totals)) == 3, totals
  assert memories[0].temp_bytes < memories[1].temp_bytes < memories[2].temp_bytes
  # The device-resident train split (4000 x 40 float32) is counted, whatever the batch.
  assert all(m.data_bytes >= 4000 * 40 * 4 for m in memories)
  assert len({m.state_bytes for m in memories}) == 1
  # The donated state is written in place, not counted twice.
  assert all(m.alias_bytes >= 0.99 * m.state_bytes for m in memories)


def test_chosen_batch_respects_the_budget_and_the_next_does_not(cnn_plan):
  _, plan = cnn_plan
  assert plan.limited_by == 'memory'
  assert plan.largest.per_device_batch == plan.largest_per_device_batch
  assert plan.largest.total_bytes <= BUDGET < plan.next_larger.total_bytes
  assert plan.next_larger.per_device_batch == plan.largest_per_device_batch + 1
  assert plan.chosen.total_bytes <= BUDGET and plan.eval_bytes <= BUDGET
  assert plan.largest_per_device_batch < 2000  # else the plan below would be trivial


def test_accumulation_plan_reproduces_the_global_batch(cnn_plan):
  config, plan = cnn_plan
  assert plan.global_batch_size == 2000 and plan.num_micro_batches > 1
  assert plan.micro_batch_size * plan.num_micro_batches == 2000
  assert plan.per_device_micro_batch <= plan.largest_per_device_batch
  validate(plan.resolved)
  run_plan = make_plan(plan.resolved, 1, 4000)
  for _, shape in run_plan.phases:
    assert shape.batch_size == 2000
    assert shape.micro_batch_size == plan.micro_batch_size
    assert shape.micro_batch_size * shape.num_micro_batches == 2000
  assert plan.resolved.train.batch_size == config.train.batch_size  # the experiment is unchanged


def test_cpu_without_a_budget_is_a_clear_error():
  config = tiny_config(train=dict(micro_batch_size='auto'))
  validate(config)
  with pytest.raises(ConfigError, match='--budget 2GiB'):
    autobatch_lib.autobatch(config)
  with pytest.raises(ConfigError, match='train.autobatch_budget=2GiB'):
    autobatch_lib.resolve_auto_micro_batch(resolve(config), 1)
  with pytest.raises(ConfigError, match='micro_batch_size=auto: resolve it'):
    make_plan(config, 1, 4000)


def test_auto_micro_batch_resolves_to_a_plan():
  config = tiny_config(model=MLP, train=dict(batch_size=2000, micro_batch_size='auto',
                                             autobatch_budget='1GiB'))
  validate(config)
  resolved = autobatch_lib.resolve_auto_micro_batch(resolve(config), 1, quiet=True)
  assert resolved.train.micro_batch_size == 2000  # 1 GiB holds the whole batch
  assert make_plan(resolved, 1, 4000).phases[0][1].num_micro_batches == 1


def test_cli_prints_the_plan(capsys):
  config_path = str(REPO / 'configs' / 'mnist1d_mlp.py')
  cli.main(['autobatch', '--config', config_path, '--budget', '1GiB', 'train.batch_size=400'])
  out = capsys.readouterr().out
  assert 'budget: 1.0 GiB (1,073,741,824 bytes, stated)' in out
  assert 'largest per-device batch that fits: 4000 (limited by training set size)' in out
  assert 'configured global batch 400 = 1 device(s) x 400 examples x no accumulation' in out
  assert 'train.micro_batch_size=400' in out
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['autobatch', '--config', config_path])
  assert exit_info.value.code == 2
  assert 'state a budget per device' in capsys.readouterr().err


@pytest.mark.parametrize('guess', [1, 37, 99, 100, 101, 500, 1000])
def test_search_finds_the_boundary_from_any_guess(guess):
  calls = []

  def fits(m):
    calls.append(m)
    return m <= 100

  assert autobatch_lib._largest_fitting(fits, guess, 1000) == (100, 101)  # pylint: disable=protected-access
  assert len(calls) <= 2 * 10 + 2  # gallop + bisection: logarithmic in the miss
  assert autobatch_lib._largest_fitting(lambda m: True, guess, 1000) == (1000, None)  # pylint: disable=protected-access
  assert autobatch_lib._largest_fitting(lambda m: False, guess, 1000)[0] == 0  # pylint: disable=protected-access


@pytest.mark.parametrize('guess', [37, 99, 100, 101, 500])
def test_a_coarser_search_brackets_the_boundary_within_its_resolution_in_fewer_probes(guess):
  calls = []

  def fits(m):
    calls.append(m)
    return m <= 100

  lo, hi = autobatch_lib._largest_fitting(fits, guess, 1000, resolution=5)  # pylint: disable=protected-access
  assert fits(lo) and not fits(hi) and hi - lo <= 5 and lo <= 100 < hi
  assert len(calls) <= 2 * 8 + 2
