"""A user's own optimizer by import path: it trains, resumes and sweeps; what it does not
declare gets a one-line answer from each feature that needs it; bad input stops in one line
before compiling."""
from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx.optim.optimizers import resolve_optimizer, set_hyperparameters
from mbx.training.workload import resolve

from helpers import tiny_config

USER_FILE = '''
import optax
import mbx.optim

def plain(learning_rate, momentum=0.9, nesterov=False):
  """Declares nothing."""
  return optax.chain(optax.clip_by_global_norm(10.0),
                     optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))

@mbx.optim.declare(momentum='momentum', batch_rule='linear', preconditioner='identity')
def declared(learning_rate, momentum=0.9):
  return optax.sgd(learning_rate, momentum=momentum)

def not_a_transform(learning_rate):
  return 'sgd'

def no_learning_rate(momentum=0.9):
  return optax.sgd(0.1, momentum=momentum)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  (tmp_path / 'my_optimizers.py').write_text(textwrap.dedent(USER_FILE))
  monkeypatch.syspath_prepend(str(tmp_path))
  return 'my_optimizers'


def _config(name, **optim):
  return tiny_config(optim=dict(name=name, learning_rate=0.05, **optim), name='own')


def test_an_optimizer_in_the_users_file_trains_resumes_and_is_recorded(user_module, tmp_path,
                                                                       capfd):
  config = _config(f'{user_module}:plain', options={'momentum': 0.8, 'nesterov': True})
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  assert run.status['status'] == 'done' and np.isfinite(run.status['eval_loss'])
  # Recorded as an import path any later process reaches (here the file: not under the cwd).
  assert run.config.optim.name == str(tmp_path / 'my_optimizers.py') + ':plain'
  assert dict(run.config.optim.options) == {'momentum': 0.8, 'nesterov': True}
  # Smith's g needs the momentum, which `plain` does not declare: said once, column left out.
  assert 'sgd_noise_scale' not in run.train_metrics
  assert "declares none; declare it beside the factory with @mbx.optim.declare(momentum=...)" \
      in capfd.readouterr().err
  again = mbx.train(config, tmp_path / 'run', quiet=True)  # finished: nothing to do
  assert again.status['step'] == run.status['step']
  declared = mbx.train(_config(f'{user_module}:declared', options={'momentum': 0.8}),
                       tmp_path / 'declared', quiet=True)
  assert 'sgd_noise_scale' in declared.train_metrics


def test_undeclared_facts_get_one_line_from_each_feature_that_needs_them(user_module):
  name = f'{user_module}:plain'
  policy = tiny_config(optim=dict(name=name), train=dict(
      batch_policy='noise_scale', noise_scale=True, duration='1 epochs', max_batch_size=256))
  with pytest.raises(mbx.ConfigError, match=r"^train.batch_policy=noise_scale with "
                     r"train.batch_policy_lr=auto needs the optimizer's batch rule, and "
                     r"optim.name='my_optimizers:plain' declares none; declare it"):
    resolve(policy)
  optimizer = resolve_optimizer(_config(name))
  state = optimizer.transform().init({'w': jnp.ones(2)})
  with pytest.raises(ValueError, match=r"^the noise-scale probe needs the optimizer's "
                     r"preconditioner, and optim.name='\S*my_optimizers\S*:plain' declares none"):
    optimizer.preconditioner(state, 'the noise-scale probe')
  from mbx.study import cbs  # pylint: disable=import-outside-toplevel
  with pytest.raises(mbx.ConfigError, match=r"batch rule.*declares none"):
    cbs.derive_sweep(_config(name), cbs.Options(), num_train=4000, quick=False)


def test_declared_preconditioners():
  params = {'w': jnp.array([1.0, -2.0, 3.0])}
  grads = {'w': jnp.array([0.5, -1.0, 2.0])}
  adam = resolve_optimizer(tiny_config(optim=dict(name='adam', b2=0.99, eps=1e-3)))
  transform = adam.transform()
  state = transform.init(params)
  for _ in range(2):
    _, state = transform.update(grads, set_hyperparameters(state, learning_rate=0.1), params)
  nu = (1 - 0.99) * grads['w']**2 + 0.99 * (1 - 0.99) * grads['w']**2
  expected = 1 / (jnp.sqrt(nu / (1 - 0.99**2)) + 1e-3)
  np.testing.assert_allclose(adam.preconditioner(state, 'test')['w'], expected, rtol=1e-5)
  momentum = resolve_optimizer(tiny_config(optim=dict(name='momentum')))
  assert momentum.preconditioner(momentum.transform().init(params), 'test') is None  # P = I


@pytest.mark.parametrize('name, options, message', [
    ('my_optimizers:missing', {}, "optim.name='my_optimizers:missing': 'my_optimizers' has no "
     "attribute 'missing'"),
    ('no_such_module:make', {}, "optim.name='no_such_module:make': cannot import "
     "'no_such_module'"),
    ('my_optimizers:not_a_transform', {}, "optim.name='my_optimizers:not_a_transform': "
     "returns str, not an optax.GradientTransformation"),
    ('my_optimizers:no_learning_rate', {}, "optim.name='my_optimizers:no_learning_rate': the "
     "factory must take learning_rate (it takes momentum)"),
    ('my_optimizers:plain', {'momentun': 0.5}, "optim.options.momentun is not an option of "
     "optimizer 'my_optimizers:plain'; did you mean optim.options.momentum?"),
    ('adamm', {}, "optim.name='adamm': did you mean adam or adamw?"),
])
def test_bad_optimizers_stop_in_one_line(user_module, name, options, message):
  with pytest.raises(mbx.ConfigError) as error:
    resolve(_config(name, options=options))
  text = str(error.value)
  assert text.startswith(message), text
  assert '\n' not in text


def test_an_optim_field_the_optimizer_does_not_read_is_refused(user_module):
  with pytest.raises(mbx.ConfigError, match=r"^optim.b2=0.99: optim.name='my_optimizers:plain' "
                     r"does not read it \(an import-path optimizer takes its keyword arguments "
                     r"from optim.options"):
    resolve(_config(f'{user_module}:plain', b2=0.99))


def test_the_cli_checks_the_optimizer_before_jax_loads(tmp_path):
  from helpers import run_python  # pylint: disable=import-outside-toplevel
  code = f'''
    import json, sys
    from mbx.cli import main
    try:
      main(['train', '--config', 'configs/mnist1d_cnn.py', '--workdir', {str(tmp_path)!r},
            'optim.name=lion', 'optim.b2=0.98'])
    except SystemExit as exit:
      print(json.dumps({{'code': exit.code, 'jax': 'jax' in sys.modules}}))
  '''
  result = run_python(code)
  assert result == {'code': 2, 'jax': False}


def test_built_in_lion_and_muon_train(tmp_path):
  for name in ('lion', 'muon'):
    run = mbx.train(tiny_config(optim=dict(name=name, learning_rate=1e-3 if name == 'lion'
                                           else 0.02)), tmp_path / name, quiet=True)
    assert run.status['status'] == 'done' and np.isfinite(run.status['eval_loss']), name
    assert 'sgd_noise_scale' in run.train_metrics, name


def test_the_increase_batch_study_needs_a_declared_momentum(user_module):
  from mbx.study import increase_batch  # pylint: disable=import-outside-toplevel
  with pytest.raises(mbx.ConfigError, match=r"^the increase-batch study \(g = εN/\(B\(1 − m\)\)\) "
                     r"needs the optimizer's momentum, and optim.name='my_optimizers:plain' "
                     r"declares none"):
    increase_batch.check(_config('my_optimizers:plain'), increase_batch.Options())
  increase_batch.check(_config('my_optimizers:declared'), increase_batch.Options())


def test_packed_trials_log_their_own_momentum(tmp_path):
  """Smith's g in each packed trial's rows uses that trial's momentum (a trial field)."""
  configs = [tiny_config(optim=dict(name='momentum', learning_rate=0.05, momentum=m),
                         name=f'm{m}') for m in (0.9, 0.5)]
  runs = mbx.train_packed(configs, [tmp_path / 'a', tmp_path / 'b'], quiet=True)
  assert runs[0].status.get('packed_trials') == 2
  for run, m in zip(runs, (0.9, 0.5)):
    rows = run.train_metrics
    np.testing.assert_allclose(rows['sgd_noise_scale'],
                               rows['learning_rate'] * 4000 / (64 * (1 - m)), rtol=1e-6)


def test_injected_hyperparameters_are_floats_whatever_the_config_holds():
  optimizer = resolve_optimizer(mbx.OptimConfig(name='sgd', learning_rate=1))
  state = optimizer.transform().init({'w': jnp.ones(2)})
  assert state.hyperparams['learning_rate'].dtype == jnp.float32
  assert float(set_hyperparameters(state, learning_rate=0.5).hyperparams['learning_rate']) == 0.5


def test_a_built_in_field_given_as_an_option_is_refused():
  with pytest.raises(mbx.ConfigError, match=r"^optim.options.momentum: optim.name='momentum' "
                     r"reads it from optim.momentum; set optim.momentum instead$"):
    resolve(tiny_config(optim=dict(name='momentum', options={'momentum': 0.5})))


def test_local_cbs_branches_follow_the_rule_from_the_factorys_defaults(tmp_path):
  """lion's β2 is an option left at its default (0.99): a branch at 2B under
  sqrt+beta2_half_life gets √2 η and 0.99², and each branch config is valid."""
  from mbx.training.branching import branch_configs  # pylint: disable=import-outside-toplevel
  config = tiny_config(optim=dict(name='lion', learning_rate=1e-3), train=dict(
      batch_size_milestones=(640,), batch_size_milestone_unit='examples', batch_size_factor=2,
      duration='1280 examples', batch_size_rule='sqrt'))
  mbx.train(config, tmp_path / 'source', quiet=True)
  branches = branch_configs(tmp_path / 'source', 10, (1, 2), '256 examples',
                            'sqrt+beta2_half_life')
  (_, _, same), (_, _, double) = branches
  assert dict(same.optim.options) == {} and same.optim.learning_rate == 1e-3
  assert double.optim.options['b2'] == pytest.approx(0.99 ** 2)
  assert double.optim.learning_rate == pytest.approx(1e-3 * np.sqrt(2))
  for _, _, branch in branches:
    assert branch.train.batch_size_rule == 'none'
    resolve(branch)


def test_a_checkpoint_of_another_layout_stops_in_one_line_and_stays(tmp_path):
  """A run written when optimizer states had another layout (an earlier mbx: optax's state as it
  is) is not resumed from scratch: its checkpoints stay where they are and the run stops in
  one line."""
  import json  # pylint: disable=import-outside-toplevel
  from helpers import run_python  # pylint: disable=import-outside-toplevel
  code = f'''
    import json, sys, optax
    sys.path.insert(0, 'tests')
    import mbx
    from mbx.optim import optimizers
    from mbx.training import step
    from helpers import tiny_config
    optimizers.Optimizer.transform = lambda self: optax.adam(1e-2)
    step.set_hyperparameters = lambda state, **values: state
    mbx.train(tiny_config(name='layout'), {str(tmp_path)!r}, quiet=True)
    print(json.dumps({{}}))
  '''
  run_python(code)
  status = json.loads((tmp_path / 'status.json').read_text())
  (tmp_path / 'status.json').write_text(json.dumps({**status, 'status': 'running'}))
  with pytest.raises(mbx.ConfigError) as error:
    mbx.train(tiny_config(name='layout'), tmp_path, quiet=True)
  text = str(error.value)
  assert 'checkpoint step 20 holds a train state of another layout' in text and '\n' not in text
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['10', '20']


def test_a_sweep_over_several_optimizers_keeps_each_trial_to_the_fields_it_reads():
  """AdamW with β2 = 0.99 as the base, searched with momentum SGD and Lion too: each trial
  keeps the fields its optimizer reads (β2 only for AdamW) and is a valid config."""
  from mbx.sweep.grid import SearchSpace, SweepConfig, expand  # pylint: disable=import-outside-toplevel
  base = tiny_config(optim=dict(name='adamw', b2=0.99, weight_decay=0.1))
  sweep = SweepConfig(base=base, batch_sizes=(32,), search=tuple(
      SearchSpace(name, learning_rate=(1e-3, 1e-2), num_learning_rates=1)
      for name in ('adamw', 'momentum', 'lion')))
  trials = {t.optimizer: t.config for t in expand(sweep)}
  assert trials['adamw'].optim.b2 == 0.99 and trials['adamw'].optim.weight_decay == 0.1
  assert trials['momentum'].optim.b2 == 0.999 and trials['momentum'].optim.weight_decay == 0.1
  assert trials['lion'].optim.weight_decay == 0.0 and dict(trials['lion'].optim.options) == {
      'b1': 0.9}
  for config in trials.values():
    mbx.validate(config)


def test_autobatch_counts_the_users_optimizer_state(user_module):
  """AutoBatch measures the compiled step of a user's optimizer: its momentum buffer (one
  params-sized tree) is in the state beside plain SGD's none."""
  from mbx.training import autobatch  # pylint: disable=import-outside-toplevel
  from mbx.training.workload import resolve as resolve_workload  # pylint: disable=import-outside-toplevel
  plain = autobatch.memory_of_step(tiny_config(optim=dict(name='sgd')), 16)
  workload = resolve_workload(_config(f'{user_module}:declared'))
  users = autobatch.memory_of_step(workload, 16)
  params = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(
      workload.model().init(jax.random.key(0), workload.sample_inputs())['params']))
  assert users.state_bytes - plain.state_bytes >= params


def test_schedule_free_adamw_is_evaluated_at_its_averaged_iterate(tmp_path):
  """The loop's evaluations use the declared eval_params view: the final eval loss is the one
  at optax's schedule_free_eval_params of the final state, not at the training iterate."""
  import optax  # pylint: disable=import-outside-toplevel
  from mbx.training.checkpoints import Checkpoints  # pylint: disable=import-outside-toplevel
  from mbx.training.evaluation import evaluate_split  # pylint: disable=import-outside-toplevel
  from mbx.training.step import init_train_state, make_mesh  # pylint: disable=import-outside-toplevel
  config = tiny_config(optim=dict(name='schedule_free_adamw', learning_rate=0.01))
  run = mbx.train(config, tmp_path / 'run', quiet=True)
  workload = resolve(run.config)
  mesh = make_mesh(jax.devices()[:1])
  sample = jnp.asarray(workload.dataset.arrays('train')['inputs'][:1])
  like = init_train_state(workload.model(mesh), workload.optimizer.transform(), sample, seed=0,
                          mesh=mesh, task=workload.task, probes=workload.probes)
  state, _ = Checkpoints(run.workdir / 'checkpoints', read_only=True).restore(20, like)
  averaged = workload.optimizer.eval_params(state.opt_state, state.params)
  inner = state.opt_state.inner_state
  found = [s for s in jax.tree.leaves(inner, is_leaf=lambda x: isinstance(
      x, optax.contrib.ScheduleFreeState)) if isinstance(s, optax.contrib.ScheduleFreeState)]
  expected = optax.contrib.schedule_free_eval_params(found[0], state.params)
  for a, b in zip(jax.tree.leaves(averaged), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  at_average = evaluate_split(workload, averaged, state.model_state, 'validation')['loss']
  at_iterate = evaluate_split(workload, state.params, state.model_state, 'validation')['loss']
  assert run.status['eval_loss'] == pytest.approx(at_average, rel=1e-5)
  assert abs(at_average - at_iterate) > 1e-4
