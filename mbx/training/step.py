"""The train step: one jitted, data-parallel update (state, hyper, batch) -> (state, metrics).

`make_step` is the only step builder: solo runs, packed trials (vmapped over stacked states),
AutoBatch and dry runs all compile the program it returns. The global batch (a dict of arrays,
see mbx.tasks) is sharded over a 1-D mesh axis 'data'; parameters and optimizer state are
replicated. Inside `shard_map` each device loops over its slices of the micro-batches,
accumulating gradients locally, and a single psum at the end forms the mean gradient. The
per-device, per-micro-batch gradients of that loop are what in-step probes (probes.py, e.g. the
gradient noise scale) measure, for free, and each is computed by the configured update rule
(mbx.optim.update_rules: the plain gradient, or SAM's gradient at an ascent point).

`hyper` holds the inputs in which trials of one sweep differ (HYPER_FIELDS: peak-LR scale,
momentum, data seed, schedule progress), so one compiled program serves them all.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mbx.data.example_order import device_major_arrangement
from mbx.optim.optimizers import Optimizer, set_hyperparameters
from mbx.optim.update_rules import PLAIN
from mbx.tasks import Task, weighted_sum
from mbx.training.plan import StepShape
from mbx.training.probes import GroupGradients

DATA_AXIS = 'data'
NORM_METRICS = ('grad_norm', 'update_norm', 'param_norm', 'learning_rate')
# Small models: one concatenated vector per norm is far fewer XLA:CPU kernels than one
# reduction per leaf; large ones: per-leaf sums avoid a params-sized copy.
CONCAT_NORM_MAX_PARAMS = 2**20


def train_metric_names(task: Task) -> tuple[str, ...]:
  """What a step reports of the task: the loss, then `task.train_metrics` (default: all of
  `task.metrics`). Each is a kernel more in the step; see `_after` for why that can cost."""
  names = getattr(task, 'train_metrics', None) or tuple(task.metrics)
  return ('loss',) + tuple(m for m in names if m != 'loss')


def probe_metric_names(probes: Sequence) -> tuple[str, ...]:
  return tuple(m for probe in probes for m in probe.metrics)


def metric_names(task: Task, probes: Sequence) -> tuple[str, ...]:
  """Names of the entries of `metric_sums` (sums since the last log, with step counts)."""
  probe_part = probe_metric_names(probes) + ('probe_steps',) if probes else ()
  return train_metric_names(task) + NORM_METRICS + probe_part + ('steps',)


def step_metric_names(task: Task, probes: Sequence, measuring: bool) -> tuple[str, ...]:
  """Names of the entries of the metrics vector a step returns (and adds to the sums)."""
  probe_part = probe_metric_names(probes) + ('probe_steps',) if measuring and probes else ()
  return train_metric_names(task) + NORM_METRICS + ('steps',) + probe_part


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. Scalars are packed into few arrays: on
  XLA:CPU every buffer crossing the jit boundary costs ~1 us per step, which is
  most of a step at batch size 1."""
  counters: jax.Array        # int32 [steps taken, examples seen (training-stream position)]
  params: Any
  model_state: Any           # e.g. {'batch_stats': ...}; {} when none
  opt_state: Any
  probes: dict[str, Any]     # each probe's state, by probe name; {} when none
  metric_sums: jax.Array     # float32 [len(metric_names)], summed since the last log

  @property
  def step(self) -> jax.Array:
    return self.counters[0]

  @property
  def examples_seen(self) -> jax.Array:
    return self.counters[1]


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices, (DATA_AXIS,))


def batch_norm_axis_name(mesh: Mesh) -> str | None:
  """The axis BatchNorm must average over: none on one device, where the step runs
  without shard_map (see _sharded_gradients)."""
  return DATA_AXIS if mesh.devices.size > 1 else None


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def zero_metric_sums(task: Task, probes: Sequence) -> np.ndarray:
  return np.zeros(len(metric_names(task, probes)), np.float32)


_INIT_FNS: dict = {}  # jitted initialisations, shared by trials that differ only in seed


def init_train_state(model, optimizer, sample_inputs, *, seed: int, mesh: Mesh, task: Task,
                     probes: Sequence = (), cache_key=None) -> TrainState:
  """Initialises parameters from `seed` (whatever the device count), replicated.

  One jitted program: op-by-op initialisation differs in the last bit between
  processes with different device counts, and some models (BatchNorm at small
  batch) amplify that within a few steps. The seed is an input, so callers that
  pass the same `cache_key` (same model, optimizer and mesh) compile it once.
  """
  takes_train = _takes_train(model)

  def init(seed):
    kwargs = {'train': False} if takes_train else {}
    variables = model.init(jax.random.key(seed), sample_inputs, **kwargs)
    params = variables['params']
    return TrainState(
        counters=jnp.zeros(2, jnp.int32), params=params,
        model_state={k: v for k, v in variables.items() if k != 'params'},
        opt_state=optimizer.init(params),
        probes={probe.name: probe.init(params) for probe in probes},
        metric_sums=jnp.asarray(zero_metric_sums(task, probes)))
  if cache_key is None:
    return jax.jit(init, out_shardings=replicated(mesh))(seed)
  if cache_key not in _INIT_FNS:
    if len(_INIT_FNS) >= 16:
      _INIT_FNS.pop(next(iter(_INIT_FNS)))
    _INIT_FNS[cache_key] = jax.jit(init, out_shardings=replicated(mesh))
  return _INIT_FNS[cache_key](seed)


def _takes_train(model) -> bool:
  return 'train' in inspect.signature(type(model).__call__).parameters


def apply_model(model, params, model_state, inputs, *, train: bool, dropout_key=None):
  """Outputs and the updated model state (BatchNorm statistics in train mode)."""
  variables = {'params': params, **model_state}
  kwargs = {'train': train} if _takes_train(model) else {}
  if train and model_state:
    outputs, new_state = model.apply(variables, inputs, mutable=list(model_state),
                                     rngs={'dropout': dropout_key}, **kwargs)
    return outputs, dict(new_state)
  rngs = {'dropout': dropout_key} if train else None
  return model.apply(variables, inputs, rngs=rngs, **kwargs), model_state


def sum_sq(tree, per_leaf: bool = False):
  """Squared L2 norm of a tree. Under vmap (packed trials) concatenating the leaves
  copies strided arrays: per-leaf sums are then faster (112 vs 185 us per K=8 step)."""
  leaves = [leaf.astype(jnp.float32) for leaf in jax.tree.leaves(tree)]
  if not per_leaf and sum(leaf.size for leaf in leaves) <= CONCAT_NORM_MAX_PARAMS:
    flat = jnp.concatenate([leaf.ravel() for leaf in leaves])
    return jnp.dot(flat, flat)
  return sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)


def _after(x, tree):
  """`x`, unchanged, but only once every leaf of `tree` has been computed.

  Chains unrolled micro-batches: otherwise XLA:CPU sees independent gradients and, at
  small batch, hands the step to its thread pool (measuring the noise scale at B = 2
  cost ~1.8x a plain step, now ~1.1x). An optimization_barrier orders nothing there:
  its outputs alias its inputs, and the thunk runtime orders kernels by the buffers
  they read and write. `probe` is NaN only if the gradient is not finite, and then
  neither is the step.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  probe = sum(leaf.ravel()[0] for leaf in jax.tree.leaves(tree))
  return jnp.where(jnp.isnan(probe), probe.astype(x.dtype), x)


def _as_varying(value):
  if DATA_AXIS in jax.typeof(value).manual_axis_type.varying:
    return value
  return jax.lax.pcast(value, (DATA_AXIS,), to='varying')


def _sharded_gradients(model, task: Task, probes: Sequence, shape: StepShape, mesh: Mesh,
                       per_leaf_norms: bool = False, update_rule=PLAIN):
  """Mean gradient over the global batch, computed per device then psum'ed once.

  A micro-batch's loss is its mean per-example loss; with weights (padding, per-token
  masks) it is sum(loss x weight) x k / W, with W the weight of the whole global batch, so
  that the mean over the k groups is exactly the weighted mean loss of the global batch.
  On one device the same code runs without shard_map: XLA:CPU then fuses across
  what would be the shard_map boundary (~40 us less per step at batch size 1).
  Models must then be built with batch_norm_axis_name=None.
  Each group's gradient is `update_rule.group_gradient` (mbx.optim.update_rules), handed the
  group's value_and_grad: SAM's ascent is thus per device and micro-batch (m-sharpness).
  """
  num_devices = mesh.devices.size
  num_micro = shape.num_micro_batches
  num_groups = num_devices * num_micro
  measuring = bool(probes) and shape.measure_noise
  contrast = measuring and any(getattr(p, 'wants_contrast', False) for p in probes)

  sharded = num_devices > 1
  psum = (lambda v: jax.lax.psum(v, DATA_AXIS)) if sharded else (lambda v: v)
  as_varying = (lambda tree: jax.tree.map(_as_varying, tree)) if sharded else (lambda t: t)
  # Python numbers (unweighted counts) are the same on every device: scaled, not psum'ed, as
  # an all-reduce of a constant would be an input-free kernel (see `_after`).
  total = lambda v: v * num_devices if isinstance(v, (int, float)) else psum(v)

  def micro_batch(params, model_state, batch, key, weight_scale):
    def loss_fn(p):
      outputs, new_state = apply_model(model, p, model_state, batch['inputs'], train=True,
                                       dropout_key=key)
      losses = task.losses(outputs, batch)
      weights = batch.get('weights')
      loss = losses.mean() if weights is None else weighted_sum(losses, weights) * weight_scale
      sums = {k: v for k, v in task.sums(outputs, batch, weights).items() if k != 'loss'}
      return loss, (new_state, sums)
    (loss, (new_state, sums)), grads = update_rule.group_gradient(
        jax.value_and_grad(loss_fn, has_aux=True), params)
    return grads, new_state, loss, sums

  def local(params, model_state, batch, key, preconditioner=None):
    device = jax.lax.axis_index(DATA_AXIS) if sharded else 0
    # Differentiating w.r.t. replicated params would psum the gradient implicitly;
    # marked per-device, each device keeps its own gradient (for the probes)
    # and the one explicit psum below averages them.
    params = as_varying(params)
    micro = jax.tree.map(lambda a: a.reshape(num_micro, -1, *a.shape[1:]), batch)
    weight_scale = None
    if 'weights' in batch:
      weight_scale = num_groups / psum(jnp.sum(batch['weights'].astype(jnp.float32)))
    zero = jnp.zeros((), jnp.float32)
    sq_norm = lambda tree: sum_sq(tree, per_leaf_norms)
    p_sq_norm = lambda tree: weighted_sum_sq(tree, preconditioner, per_leaf_norms)
    norm_of = lambda probe: (p_sq_norm if getattr(probe, 'group_norm', None) == 'preconditioned'
                             else sq_norm)

    def body(carry, inputs):
      grad_sum, model_state, loss_sum, stat_sums, group_sums, contrast_sum = carry
      batch_j, j = inputs
      key_j = jax.random.fold_in(key, device * num_micro + j)
      grads, model_state, loss, stats = micro_batch(params, model_state, batch_j, key_j,
                                                    weight_scale)
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      # `+` keeps unweighted counts (Python ints) out of the compiled program.
      stat_sums = stats if stat_sums is None else jax.tree.map(
          lambda a, b: a + b, stat_sums, stats)
      if measuring:
        group_sums = {probe.name: jax.tree.map(jnp.add, group_sums[probe.name],
                                               probe.per_group(grads, norm_of(probe)))
                      for probe in probes}
      if contrast:
        sign = contrast_sign(device * num_micro + j, num_groups)
        contrast_sum = jax.tree.map(lambda c, g: c + sign * g, contrast_sum, grads)
      return (grad_sum, model_state, loss_sum + loss, stat_sums, group_sums, contrast_sum), None

    group_zeros = {}
    if measuring:
      group_zeros = {probe.name: jax.tree.map(
          lambda a: jnp.zeros(a.shape, a.dtype),
          jax.eval_shape(lambda g, p=probe: p.per_group(g, norm_of(p)), params))
          for probe in probes}
    contrast_zeros = jax.tree.map(jnp.zeros_like, params) if contrast else None
    batch_0 = jax.tree.map(lambda a: a[0], micro)
    if shape.accumulation == 'scan' and num_micro > 1:
      stat_zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
          lambda: micro_batch(params, model_state, batch_0, key, weight_scale)[3]))
      # Everything the loop accumulates differs per device ('varying' in shard_map).
      carry = as_varying((jax.tree.map(jnp.zeros_like, params), model_state, zero,
                          stat_zeros, group_zeros, contrast_zeros))
      carry, _ = jax.lax.scan(body, carry, (micro, jnp.arange(num_micro)))
    else:  # straight-line code: XLA:CPU runs loop bodies 5-30x slower (docs/performance.md)
      carry = (jax.tree.map(jnp.zeros_like, params), model_state, zero, None, group_zeros,
               contrast_zeros)
      for j in range(num_micro):
        batch_j = jax.tree.map(lambda a: a[j], micro)
        if j > 0:
          batch_j = {**batch_j, 'inputs': _after(batch_j['inputs'], carry[0])}
        carry, _ = body(carry, (batch_j, j))
    grad_sum, model_state, loss_sum, stat_sums, group_sums, contrast_sum = carry
    grads = jax.tree.map(lambda g: psum(g) / num_groups, grad_sum)
    # Ghost BatchNorm statistics differ per device; global BN ones already agree.
    model_state = jax.tree.map(lambda v: psum(v) / num_devices, model_state)
    stats = {'loss': psum(loss_sum) / num_groups,
             'sums': {k: total(v) for k, v in stat_sums.items()},
             'group_means': jax.tree.map(lambda v: psum(v) / num_groups, group_sums),
             'contrast': (jax.tree.map(lambda v: psum(v) / num_groups, contrast_sum)
                          if contrast else None)}
    return grads, model_state, stats

  if not sharded:
    return local
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS), P(), P()),
                       out_specs=(P(), P(), P()))


def contrast_sign(group, num_groups: int):
  """s_i of the contrast D = (1/k) Σ s_i g_i: +1, −1 alternating (0 for the last group when k
  is odd), so Σ s_i = 0 and Σ s_i² = k rounded down to even."""
  sign = 1.0 - 2.0 * (jnp.asarray(group) % 2).astype(jnp.float32)
  return jnp.where((num_groups % 2 == 1) & (jnp.asarray(group) == num_groups - 1), 0.0, sign)


def contrast_scale(num_groups: int) -> float:
  """c in Cov(D) = c Σ / b: Σ s_i² / k²."""
  return (num_groups - num_groups % 2) / num_groups**2


def weighted_sum_sq(tree, weights, per_leaf: bool = False):
  """Σ w x² over a tree (weights a tree like it); |tree|² when weights is None."""
  if weights is None:
    return sum_sq(tree, per_leaf)
  return sum(jnp.sum(w.astype(jnp.float32) * jnp.square(x.astype(jnp.float32)))
             for x, w in zip(jax.tree.leaves(tree), jax.tree.leaves(weights)))


# The per-trial inputs of the step, by name: one float32 vector (one buffer crossing jit, ~1 us
# a step on XLA:CPU), read inside the step with `hyper_field`.
HYPER_FIELDS = ('learning_rate_scale', 'momentum', 'data_seed', 'progress', 'progress_per_step',
                'first_step')
HYPER_SIZE = len(HYPER_FIELDS)


def hyper_field(hyper, name: str):
  """The entry `name` (of HYPER_FIELDS) of a hyper vector; a static index."""
  return hyper[HYPER_FIELDS.index(name)]


def trial_hyperparameters(learning_rate_scale: float, momentum: float, data_seed: int,
                          progress: tuple[float, float, int] = (0.0, 0.0, 0)):
  """The per-trial inputs of the step, as one float32 vector (one buffer).

  progress = (schedule position at step s0, its advance per step, s0): where the LR schedule
  is read when StepParts.schedule_progress is set (AdaScale), instead of the examples seen."""
  if not 0 <= data_seed < 2**24:
    raise ValueError(f'train.data_seed={data_seed}: must be in [0, 2^24) (exact in float32)')
  if not 0 <= progress[2] < 2**24:
    raise ValueError(f'step {progress[2]}: must be in [0, 2^24) (exact in float32)')
  values = dict(zip(HYPER_FIELDS, (learning_rate_scale, momentum, data_seed, *progress)))
  return np.asarray([values[name] for name in HYPER_FIELDS], np.float32)


@dataclasses.dataclass(frozen=True)
class StepParts:
  """What the step closes over: model, task, probes, the optimizer and LR schedule, and the
  update rule that computes each gradient group's gradient."""
  model: Any
  task: Task
  optimizer: Optimizer
  lr_schedule: Callable          # examples seen -> LR at the reference peak
  augment: Callable | None = None
  probes: tuple = ()
  schedule_progress: bool = False  # read the schedule at hyper's progress, not examples seen
  update_rule: Any = PLAIN         # mbx.optim.update_rules: e.g. SAM


NEEDED_BY = 'train.noise_scale_estimators (a preconditioned estimator)'


def example_gradients(model, task: Task, params, model_state, batch, key, count: int):
  """Per-example gradients of the first `count` examples of `batch` (vmap): leaves (count,
  ...). Each example's loss is its (weighted) mean over its entries, as in the step."""
  rows = jax.tree.map(lambda a: a[:count], batch)

  def loss_of(p, row):
    one = jax.tree.map(lambda a: a[None], row)
    outputs, _ = apply_model(model, p, model_state, one['inputs'], train=True, dropout_key=key)
    losses = task.losses(outputs, one)
    weights = one.get('weights')
    if weights is None:
      return losses.mean()
    return weighted_sum(losses, weights) / jnp.maximum(jnp.sum(weights), 1e-12)
  return jax.vmap(jax.grad(loss_of), in_axes=(None, 0))(params, rows)


def make_update(parts: StepParts, shape: StepShape, mesh: Mesh, *, packed: bool = False):
  """The pure update (state, hyper, arranged global batch) -> (state, metrics).

  Batch rows must be in `device_major_arrangement` order (see example_order);
  `metrics` is a float32 vector whose entries are named by `step_metric_names`.
  packed: the update will be vmapped over trials.
  """
  gradients = _sharded_gradients(parts.model, parts.task, parts.probes, shape, mesh,
                                 per_leaf_norms=packed, update_rule=parts.update_rule)
  probes = parts.probes if shape.measure_noise else ()
  reads_preconditioner = any(getattr(p, 'group_norm', None) == 'preconditioned'
                             or getattr(p, 'reads_preconditioner', False) for p in probes)
  # The Hessian's gradient: the plain rule (not SAM's ascent), no probes.
  plain_gradients = _sharded_gradients(parts.model, parts.task, (), shape, mesh,
                                       per_leaf_norms=packed) if probes else None
  arrangement = device_major_arrangement(shape.batch_size, mesh.devices.size,
                                         shape.num_micro_batches)
  measuring = bool(parts.probes) and shape.measure_noise
  names = metric_names(parts.task, parts.probes)
  positions = np.array([names.index(n) for n in step_metric_names(parts.task, parts.probes,
                                                                   measuring)])

  optimizer = parts.optimizer.transform()
  trial_momentum = 'momentum' in parts.optimizer.injected

  def update(state: TrainState, hyper, batch: Mapping[str, jax.Array]):
    data_key = jax.random.key(hyper_field(hyper, 'data_seed').astype(jnp.int32))
    augment_key, dropout_key = jax.random.fold_in(data_key, 1), jax.random.fold_in(data_key, 2)
    batch = dict(batch)
    if parts.augment is not None:
      # One key per stream position: augmentation does not depend on the device count.
      stream_positions = state.examples_seen + jnp.asarray(arrangement)
      keys = jax.vmap(lambda p: jax.random.fold_in(augment_key, p))(stream_positions)
      batch['inputs'] = jax.vmap(lambda k, xi: parts.augment(k, xi[None])[0])(
          keys, batch['inputs'])
    step_key = jax.random.fold_in(dropout_key, state.step)
    preconditioner = (parts.optimizer.preconditioner(state.opt_state, NEEDED_BY)
                      if reads_preconditioner else None)
    grads, model_state, stats = gradients(state.params, state.model_state, batch, step_key,
                                          preconditioner)
    progress = state.examples_seen
    if parts.schedule_progress:  # AdaScale: the schedule advances by gain x base batch a step
      first_step = hyper_field(hyper, 'first_step').astype(jnp.int32)
      steps = (state.step - first_step).astype(jnp.float32)
      progress = hyper_field(hyper, 'progress') + hyper_field(hyper, 'progress_per_step') * steps
    learning_rate = hyper_field(hyper, 'learning_rate_scale') * parts.lr_schedule(progress)
    # The LR (and the trial's momentum) enter through optax's injected hyperparameters.
    opt_state = set_hyperparameters(
        state.opt_state, learning_rate=learning_rate,
        **({'momentum': hyper_field(hyper, 'momentum')} if trial_momentum else {}))
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_sq = sum_sq(grads, packed)
    # The micro-batches do not sum the task's loss: the objective (the weighted mean loss over
    # the global batch) times the summed weight is that sum, so metrics derived from it (a
    # regression's rmse) come out right; 'loss' is the objective itself.
    sums = stats['sums']
    reported = {**parts.task.finalize(sums | {'loss': stats['loss'] * sums['count']}),
                'loss': stats['loss']}
    metrics = [reported[n] for n in train_metric_names(parts.task)]
    metrics += [jnp.sqrt(grad_sq), jnp.sqrt(sum_sq(updates, packed)),
                jnp.sqrt(sum_sq(params, packed)), learning_rate, 1.0]
    probe_states = state.probes
    if measuring:
      num_groups = mesh.devices.size * shape.num_micro_batches
      hvp = lambda v: jax.jvp(
          lambda p: plain_gradients(p, state.model_state, batch, step_key, None)[0],
          (state.params,), (v,))[1]
      seen = GroupGradients(
          grads=grads, group_means=stats['group_means'], grad_sq_norm=grad_sq,
          num_groups=num_groups, group_size=shape.batch_size // num_groups,
          params=state.params, updates=updates, preconditioner=preconditioner,
          p_sq_norm=lambda tree: weighted_sum_sq(tree, preconditioner, packed),
          contrast=stats['contrast'], contrast_scale=contrast_scale(num_groups), hvp=hvp,
          example_gradients=lambda n: example_gradients(parts.model, parts.task, state.params,
                                                        state.model_state, batch, step_key, n))
      probe_states = dict(state.probes)
      for probe in parts.probes:
        probe_states[probe.name], values = probe.update(state.probes[probe.name], seen)
        metrics += [values[m] for m in probe.metrics]
      metrics.append(1.0)
    metrics = jnp.stack([jnp.asarray(m, jnp.float32) for m in metrics])
    # Scattered into the sums by name: padding the vector with zeros for the entries a
    # step does not measure, or two adjacent constants, become an input-free broadcast in
    # the compiled program, which makes XLA:CPU run the step's thunks concurrently
    # (~30 us more per step at B = 2).
    metric_sums = state.metric_sums.at[positions].add(metrics)
    new_state = TrainState(
        counters=state.counters + jnp.array([1, shape.batch_size], jnp.int32),
        params=params, model_state=model_state, opt_state=opt_state,
        probes=probe_states, metric_sums=metric_sums)
    return new_state, metrics

  return update, arrangement


def sliced(update, arrangement, mesh: Mesh, packed: bool = False):
  """update(state, hyper, batch) -> step(state, hyper, window, window_start): the batch is the
  slice of the device's order window (feed.DeviceFeed) at this step.

  packed: `update` is vmapped over K trials whose windows are stacked; they share their
  stream position, so one slice serves all (a vmapped slice would be a gather).
  """
  identity = np.array_equal(arrangement, np.arange(len(arrangement)))
  axis = 1 if packed else 0
  sharding = NamedSharding(mesh, P(*(None,) * axis, DATA_AXIS))

  def step(state, hyper, window, window_start):
    examples_seen = state.counters[..., 1]
    offset = (examples_seen[0] if packed else examples_seen) - window_start

    def take(rows):
      rows = jax.lax.dynamic_slice_in_dim(rows, offset, len(arrangement), axis=axis)
      if not identity:  # several devices or micro-batches: see device_major_arrangement
        rows = jnp.take(rows, arrangement, axis=axis)
      return jax.lax.with_sharding_constraint(rows, sharding)
    return update(state, hyper, jax.tree.map(take, window))
  return step


def make_step(parts: StepParts, shape: StepShape, mesh: Mesh, *, on_device_data: bool,
              packed: bool = False):
  """The jitted train step, the one program every caller compiles.

  On device: step(state, hyper, window, window_start), the training rows in the order of
  the example-order window holding this step (feed.DeviceFeed). Otherwise:
  step(state, hyper, batch) with the batch already arranged and batch-sharded.
  packed: over stacked states, hyperparameters and windows of K trials (jax.vmap).
  """
  update, arrangement = make_update(parts, shape, mesh, packed=packed)
  if packed:
    update = jax.vmap(update)
  if on_device_data:
    update = sliced(update, arrangement, mesh, packed=packed)
  return jax.jit(update, donate_argnums=0)


def make_eval_step(model, task: Task):
  """The task's sums over a padded batch (mask = real rows), and the number of real rows."""
  @jax.jit
  def eval_step(params, model_state, batch, mask):
    outputs, _ = apply_model(model, params, model_state, batch['inputs'], train=False)
    mask = mask.astype(jnp.float32)
    weights = batch.get('weights')
    if weights is not None:
      weights = weights.astype(jnp.float32) * mask.reshape(
          mask.shape + (1,) * (weights.ndim - mask.ndim))
    sums = task.sums(outputs, batch, mask if weights is None else weights)
    return {**sums, 'examples': jnp.sum(mask)}
  return eval_step
