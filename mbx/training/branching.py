"""Branching from a step at other batch sizes (Merrill et al. 2025, arXiv 2505.23971).

Two callers branch, and they must differ in where a branch starts and what it leaves behind:
- the batch policy's warmup test (train.batch_policy_criterion='branch') branches the live
  train state in-process (`branch_losses`): a decision step is not a checkpoint, the copies
  train on the examples the run reads next and are then dropped, and a resumed run decides as
  an uninterrupted one (nothing is written);
- the local critical batch size (mbx.sweep.local_cbs) branches a saved checkpoint as separate
  runs (`branch_configs`; train.init_from, resolved by `branch_source` and restored by
  `branch_from`): each branch is a resumable run directory, with its own evaluations and
  several data seeds.
What they share is written once: the hyperparameters at k x B (a batch rule, by default the
one the optimizer declares; mbx/optim/batch_rules.py) and the test of a branch against the k = 1 branch
(batch_policy.keeps_up; relative to the loss for the policy, absolute for the local CBS, as
their tolerances are configured).
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mbx import config as config_lib
from mbx.optim import batch_rules, declared
from mbx.optim.optimizers import resolve_optimizer
from mbx.training import feed as feed_lib
from mbx.training.checkpoints import Checkpoints, is_layout_mismatch
from mbx.training.plan import Segment
from mbx.training.programs import (Setup, compiled_steps, copy_state, data_seed, sync_every_step,
                                   with_rule_hyperparameters)
from mbx.training.records import Run, load_run
from mbx.training.step import TrainState, zero_metric_sums
from mbx.training.workload import resolve


def branch_source(config: config_lib.Config) -> tuple[Run, int]:
  """The run and checkpoint step that train.init_from names; ConfigError when it cannot be
  branched from (checked before a new run writes anything)."""
  init_from = config.train.init_from
  source_dir, step = config_lib.parse_init_from(init_from)
  try:
    source = load_run(source_dir)
  except FileNotFoundError as error:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: {error}') from None
  steps = source.checkpoint_steps
  step = steps[-1] if step is None and steps else step
  if step not in steps:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: no checkpoint at step {step}; '
                                 f'saved steps: {steps}')
  if source.config.model != config.model:
    raise config_lib.ConfigError(f'train.init_from={init_from!r}: that run trains a different '
                                 'model; branching needs the same model config')
  return source, step


def _same_optimizer_state(source: config_lib.Config, config: config_lib.Config) -> bool:
  """Whether the source's optimizer state fits the branch's: the same optimizer, holding the
  same injected hyperparameters."""
  if source.optim.name != config.optim.name:
    return False
  return resolve_optimizer(source).injected == resolve_optimizer(config).injected


def branch_from(state: TrainState, config: config_lib.Config) -> TrainState:
  """Params, model state and (same optimizer only) optimizer state of another run's checkpoint;
  step, examples, probes and metric sums start from zero (Merrill et al. 2025's branched runs).
  The optimizer's hyperparameters (LR, momentum, a batch rule's) are the branch's own."""
  source, step = branch_source(config)
  put = lambda tree, like: jax.tree.map(lambda a, b: jax.device_put(a, b.sharding), tree, like)
  if _same_optimizer_state(source.config, config):
    # The checkpoint's probe states and metric sums follow the source's probes: restore onto
    # that structure (both are reset below).
    source_workload = resolve(source.config)
    like = state.replace(
        probes={p.name: p.init(state.params) for p in source_workload.probes},
        metric_sums=jnp.asarray(zero_metric_sums(source_workload.task, source_workload.probes)))
    try:
      restored, _ = Checkpoints(source.workdir / 'checkpoints', read_only=True).restore(
          step, like)
    except ValueError as error:
      if not is_layout_mismatch(error):
        raise
      print(f'train.init_from={config.train.init_from!r}: its optimizer state has another '
            'layout (an earlier mbx); the branch starts from its parameters and model state '
            'with a fresh optimizer state', file=sys.stderr)
    else:
      opt_state = restored.opt_state._replace(hyperparams=state.opt_state.hyperparams)
      return restored.replace(counters=state.counters, probes=state.probes,
                              metric_sums=state.metric_sums, opt_state=opt_state)
  params, model_state, _ = source.restore(step)
  return state.replace(params=put(params, state.params),
                       model_state=put(model_state, state.model_state))


def branch_losses(s: Setup, step: int, state: TrainState, config: config_lib.Config, feed,
                  policy, batches: Sequence[int]) -> list[float]:
  """The eval loss after training a copy of `state` from `step` for train.batch_policy_branch
  at each batch (on the examples the run itself reads next, at the policy's LR for that batch);
  the copies are then dropped (Merrill et al. 2025's branched runs)."""
  t = config.train
  examples = config_lib.parse_duration(t.batch_policy_branch, 'train.batch_policy_branch'
                                       ).to_examples(t.batch_size, s.num_train,
                                                     s.plan.tokens_per_example)
  sync, losses = sync_every_step(config, s.mesh), []
  for batch in batches:
    segment = Segment(step, batch, progress=s.plan.progress_at(step),
                      lr_factor=policy.lr_factor(batch),
                      hyperparameters=policy.hyperparameters(batch))
    plan = s.replan(segments=s.plan.segments + (segment,))
    count = max(1, min(examples // batch, plan.total_steps - step))
    fns = compiled_steps(s, plan.shapes_of_phase(step), state, [config], segment)
    (measuring, hyper), (plain, _) = fns[0], fns[-1]
    branch_feed = None if s.on_device else feed_lib.HostFeed(
        s.source, s.workload.info.element_spec, plan, s.mesh, seed=data_seed(config),
        start_step=step, prefetch=config.data.prefetch)
    position = int(plan.examples_after_step[step])
    scratch = with_rule_hyperparameters(s, copy_state(state), step, plan)
    try:
      for i in range(count):
        args = feed.step_args(position + i * batch, batch) if s.on_device else branch_feed.next()
        scratch, _ = (plain if (step + i) % plan.probe_every else measuring)(scratch, hyper,
                                                                             *args)
        if sync:
          scratch.counters.block_until_ready()
    finally:
      if branch_feed is not None:
        branch_feed.close()
    losses.append(float(s.evaluator(scratch.params, scratch.model_state)['eval_loss']))
  return losses


def default_batch_rule(optimizer: str) -> str:
  """The batch rule the optimizer declares (linear for SGD-type updates, sqrt for Adam-type)."""
  rule = declared.of_name(optimizer).batch_rule
  if rule is None:
    raise declared.undeclared(optimizer, 'batch_rule', 'local CBS without lr_scaling')
  return rule


def branch_configs(run_dir: str | pathlib.Path, step: int, factors: Sequence[int],
                   window: str, lr_scaling: str | None = None, seeds: Sequence[int] = (0,)):
  """[(factor, seed, config)] continuing `run_dir`'s checkpoint at `step` with factor x B.

  Every branch sees the same amount of data (`window`, converted to examples at the
  source batch size when given in steps); the hyperparameters follow the batch rule `lr_scaling` (default: the one the optimizer
  declares, mbx/optim/declared.py).
  """
  source = load_run(run_dir).config
  batch = source.train.batch_size
  duration = config_lib.parse_duration(window, 'window')
  if duration.unit == 'steps':
    window = f'{int(duration.amount) * batch} examples'
  rule = lr_scaling or default_batch_rule(source.optim.name)
  hyperparameters = resolve_optimizer(source).hyperparameters  # with the factory's defaults
  branches = []
  for factor in factors:
    for seed in seeds:
      scaled = batch_rules.apply(rule, hyperparameters, factor, 'lr_scaling')
      optim = declared.with_hyperparameters(source.optim, {
          k: v for k, v in scaled.items() if v != hyperparameters[k]})
      train = dataclasses.replace(
          source.train, batch_size=batch * factor, duration=window, seed=source.train.seed,
          data_seed=seed, init_from=f'{pathlib.Path(run_dir).absolute()}@{step}',
          target_metric=None, target_value=None, stop_at_target=False, noise_scale=False,
          eval_growth=None, eval_every=window, log_every=window, checkpoint_every=None,
          keep_checkpoints=1, batch_size_milestones=(), batch_size_rule='none',
          micro_batch_size=None)
      branches.append((factor, seed, dataclasses.replace(
          source, optim=optim, train=train, name=f'{source.name}-branch{step}-k{factor}')))
  return branches

