"""The train step: one jitted, data-parallel update (state, batch) -> (state, metrics).

The global batch is sharded over a 1-D mesh axis 'data'; parameters and
optimizer state are replicated. Inside `shard_map` each device loops over its
slices of the micro-batches, accumulating gradients locally, and a single psum
at the end forms the mean gradient. The per-device, per-micro-batch gradient
norms fall out of that loop and give the gradient noise scale for free.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mbx.data.example_order import device_major_arrangement
from mbx.training import noise_scale as noise_scale_lib
from mbx.training.plan import StepShape

DATA_AXIS = 'data'
STEP_METRICS = ('loss', 'accuracy', 'grad_norm', 'update_norm', 'param_norm',
                'learning_rate')
NOISE_METRICS = ('grad_sq_estimate', 'trace_estimate', 'noise_steps')
# Small models: one concatenated vector per norm is far fewer XLA:CPU kernels than one
# reduction per leaf; large ones: per-leaf sums avoid a params-sized copy.
CONCAT_NORM_MAX_PARAMS = 2**20


def metric_names(noise_scale: bool) -> tuple[str, ...]:
  """Names of the entries of `metric_sums` (sums since the last log, with step counts)."""
  return STEP_METRICS + (NOISE_METRICS if noise_scale else ()) + ('steps',)


def step_metric_names(measuring_noise: bool) -> tuple[str, ...]:
  """Names of the entries of the metrics vector a step returns (and adds to the sums)."""
  return STEP_METRICS + ('steps',) + (NOISE_METRICS if measuring_noise else ())


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. Scalars are packed into few arrays: on
  XLA:CPU every buffer crossing the jit boundary costs ~1 us per step, which is
  most of a step at batch size 1."""
  counters: jax.Array        # int32 [steps taken, examples seen (training-stream position)]
  params: Any
  model_state: Any           # e.g. {'batch_stats': ...}; {} when none
  opt_state: Any
  noise_scale: noise_scale_lib.NoiseScaleState | None  # None when not measured
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


def zero_metric_sums(noise_scale: bool) -> np.ndarray:
  return np.zeros(len(metric_names(noise_scale)), np.float32)


_INIT_FNS: dict = {}  # jitted initialisations, shared by trials that differ only in seed


def init_train_state(model, optimizer, sample_x, *, seed: int, mesh: Mesh, noise_scale: bool,
                     cache_key=None) -> TrainState:
  """Initialises parameters from `seed` (whatever the device count), replicated.

  One jitted program: op-by-op initialisation differs in the last bit between
  processes with different device counts, and some models (BatchNorm at small
  batch) amplify that within a few steps. The seed is an input, so callers that
  pass the same `cache_key` (same model, optimizer and mesh) compile it once.
  """
  def init(seed):
    variables = model.init(jax.random.key(seed), sample_x, train=False)
    params = variables['params']
    return TrainState(
        counters=jnp.zeros(2, jnp.int32), params=params,
        model_state={k: v for k, v in variables.items() if k != 'params'},
        opt_state=optimizer.init(params),
        noise_scale=noise_scale_lib.NoiseScaleState.zeros() if noise_scale else None,
        metric_sums=jnp.asarray(zero_metric_sums(noise_scale)))
  if cache_key is None:
    return jax.jit(init, out_shardings=replicated(mesh))(seed)
  if cache_key not in _INIT_FNS:
    if len(_INIT_FNS) >= 16:
      _INIT_FNS.pop(next(iter(_INIT_FNS)))
    _INIT_FNS[cache_key] = jax.jit(init, out_shardings=replicated(mesh))
  return _INIT_FNS[cache_key](seed)


def cross_entropy(logits, labels):
  """optax.softmax_cross_entropy_with_integer_labels (same value, gradient equal to
  rounding) with the label logit picked by a mask, not take_along_axis: the gradient of
  that is a scatter whose constant input, shared by unrolled micro-batches, became an
  input-free kernel that made XLA:CPU run the step on its thread pool."""
  logits = logits.astype(jnp.float32)
  is_label = labels[..., None] == jnp.arange(logits.shape[-1])
  label_logits = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - label_logits


def apply_model(model, params, model_state, x, *, train: bool, dropout_key=None):
  """Logits and the updated model state (BatchNorm statistics in train mode)."""
  variables = {'params': params, **model_state}
  if train and model_state:
    logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state),
                                    rngs={'dropout': dropout_key})
    return logits, dict(new_state)
  rngs = {'dropout': dropout_key} if train else None
  return model.apply(variables, x, train=train, rngs=rngs), model_state


def _sum_sq(tree, per_leaf: bool = False):
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


def _sharded_gradients(model, shape: StepShape, mesh: Mesh, noise_scale: bool,
                       per_leaf_norms: bool = False):
  """Mean gradient over the global batch, computed per device then psum'ed once.

  On one device the same code runs without shard_map: XLA:CPU then fuses across
  what would be the shard_map boundary (~40 us less per step at batch size 1).
  Models must then be built with batch_norm_axis_name=None.
  """
  num_devices = mesh.devices.size
  num_micro = shape.num_micro_batches
  num_groups = num_devices * num_micro

  def micro_batch(params, model_state, x, y, key):
    def loss_fn(p):
      logits, new_state = apply_model(model, p, model_state, x, train=True, dropout_key=key)
      losses = cross_entropy(logits, y)
      correct = jnp.sum(jnp.argmax(logits, -1) == y)
      return losses.mean(), (new_state, correct)
    (loss, (new_state, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, new_state, loss, correct

  sharded = num_devices > 1
  psum = (lambda v: jax.lax.psum(v, DATA_AXIS)) if sharded else (lambda v: v)
  as_varying = (lambda tree: jax.tree.map(_as_varying, tree)) if sharded else (lambda t: t)

  def local(params, model_state, x, y, key):
    device = jax.lax.axis_index(DATA_AXIS) if sharded else 0
    # Differentiating w.r.t. replicated params would psum the gradient implicitly;
    # marked per-device, each device keeps its own gradient (for the noise scale)
    # and the one explicit psum below averages them.
    params = as_varying(params)
    xs = x.reshape(num_micro, -1, *x.shape[1:])
    ys = y.reshape(num_micro, -1)
    zero = jnp.zeros((), jnp.float32)

    def body(carry, inputs):
      grad_sum, model_state, loss_sum, correct_sum, group_sq_sum = carry
      xj, yj, j = inputs
      key_j = jax.random.fold_in(key, device * num_micro + j)
      grads, model_state, loss, correct = micro_batch(params, model_state, xj, yj, key_j)
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      if noise_scale and shape.measure_noise:
        group_sq_sum = group_sq_sum + _sum_sq(grads, per_leaf_norms)
      return (grad_sum, model_state, loss_sum + loss, correct_sum + correct,
              group_sq_sum), None

    carry = (jax.tree.map(jnp.zeros_like, params), model_state, zero,
             jnp.zeros((), jnp.int32), zero)
    if shape.accumulation == 'scan' and num_micro > 1:
      # Everything the loop accumulates differs per device ('varying' in shard_map).
      carry = as_varying(carry)
      carry, _ = jax.lax.scan(body, carry, (xs, ys, jnp.arange(num_micro)))
    else:  # straight-line code: XLA:CPU runs loop bodies 5-30x slower (MEASURED.md)
      for j in range(num_micro):
        xj = xs[j] if j == 0 else _after(xs[j], carry[0])
        carry, _ = body(carry, (xj, ys[j], j))
    grad_sum, model_state, loss_sum, correct_sum, group_sq_sum = carry
    grads = jax.tree.map(lambda g: psum(g) / num_groups, grad_sum)
    # Ghost BatchNorm statistics differ per device; global BN ones already agree.
    model_state = jax.tree.map(lambda v: psum(v) / num_devices, model_state)
    stats = {'loss': psum(loss_sum) / num_groups,
             'accuracy': psum(correct_sum).astype(jnp.float32) / (x.shape[0] * num_devices),
             'mean_group_sq_norm': psum(group_sq_sum) / num_groups}
    return grads, model_state, stats

  if not sharded:
    return local
  return jax.shard_map(local, mesh=mesh,
                       in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P()),
                       out_specs=(P(), P(), P()))


def make_update(model, optimizer, lr_schedule: Callable, shape: StepShape, mesh: Mesh, *,
                noise_scale: bool, noise_scale_ema: float, data_seed: int,
                augment: Callable | None, packed: bool = False):
  """The pure update (state, arranged global batch x, y) -> (state, metrics).

  `x` rows must be in `device_major_arrangement` order (see example_order);
  `metrics` is a float32 vector whose entries are named by `step_metric_names`.
  packed: the update will be vmapped over trials (packed.py).
  """
  gradients = _sharded_gradients(model, shape, mesh, noise_scale, per_leaf_norms=packed)
  arrangement = device_major_arrangement(shape.batch_size, mesh.devices.size,
                                         shape.num_micro_batches)
  data_key = jax.random.key(data_seed)
  augment_key, dropout_key = jax.random.fold_in(data_key, 1), jax.random.fold_in(data_key, 2)

  def update(state: TrainState, x, y):
    if augment is not None:
      # One key per stream position: augmentation does not depend on the device count.
      positions = state.examples_seen + jnp.asarray(arrangement)
      keys = jax.vmap(lambda p: jax.random.fold_in(augment_key, p))(positions)
      x = jax.vmap(lambda k, xi: augment(k, xi[None])[0])(keys, x)
    step_key = jax.random.fold_in(dropout_key, state.step)
    grads, model_state, stats = gradients(state.params, state.model_state, x, y, step_key)
    learning_rate = lr_schedule(state.examples_seen)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, learning_rate)
    params = optax.apply_updates(state.params, updates)
    grad_sq = _sum_sq(grads, packed)
    metrics = [stats['loss'], stats['accuracy'], jnp.sqrt(grad_sq),
               jnp.sqrt(_sum_sq(updates, packed)), jnp.sqrt(_sum_sq(params, packed)),
               learning_rate, 1.0]
    noise_state = state.noise_scale
    measuring = noise_scale and shape.measure_noise
    if measuring:
      num_groups = mesh.devices.size * shape.num_micro_batches
      grad_sq_estimate, trace_estimate = noise_scale_lib.group_estimates(
          stats['mean_group_sq_norm'], grad_sq, shape.batch_size // num_groups, num_groups)
      metrics += [grad_sq_estimate, trace_estimate, 1.0]
      noise_state = noise_scale_lib.update(noise_state, grad_sq_estimate, trace_estimate,
                                           noise_scale_ema)
    metrics = jnp.stack([jnp.asarray(m, jnp.float32) for m in metrics])
    # Scattered into the sums by name: padding the vector with zeros for the entries a
    # step does not measure, or two adjacent constants, become an input-free broadcast in
    # the compiled program, which makes XLA:CPU run the step's thunks concurrently
    # (~30 us more per step at B = 2).
    names = metric_names(noise_scale)
    positions = np.array([names.index(n) for n in step_metric_names(measuring)])
    metric_sums = state.metric_sums.at[positions].add(metrics)
    new_state = TrainState(
        counters=state.counters + jnp.array([1, shape.batch_size], jnp.int32),
        params=params, model_state=model_state, opt_state=opt_state,
        noise_scale=noise_state, metric_sums=metric_sums)
    return new_state, metrics

  return update, arrangement


def sliced(update, arrangement, mesh: Mesh, packed: bool = False):
  """update(state, ..., x, y) -> step(state, ..., window_x, window_y, window_start): the
  batch is the slice of the device's order window (feed.DeviceFeed) at this step.

  packed: `update` is vmapped over K trials whose windows are stacked; they share their
  stream position, so one slice serves all (a vmapped slice would be a gather).
  """
  identity = np.array_equal(arrangement, np.arange(len(arrangement)))
  axis = 1 if packed else 0
  sharding = NamedSharding(mesh, P(*(None,) * axis, DATA_AXIS))

  def step(state, *args):
    *leading, window_x, window_y, window_start = args
    examples_seen = state.counters[..., 1]
    offset = (examples_seen[0] if packed else examples_seen) - window_start
    x = jax.lax.dynamic_slice_in_dim(window_x, offset, len(arrangement), axis=axis)
    y = jax.lax.dynamic_slice_in_dim(window_y, offset, len(arrangement), axis=axis)
    if not identity:  # several devices or micro-batches: see device_major_arrangement
      x, y = jnp.take(x, arrangement, axis=axis), jnp.take(y, arrangement, axis=axis)
    x = jax.lax.with_sharding_constraint(x, sharding)
    y = jax.lax.with_sharding_constraint(y, sharding)
    return update(state, *leading, x, y)
  return step


def make_train_step(model, optimizer, lr_schedule, shape: StepShape, mesh: Mesh, *,
                    on_device_data: bool, **options):
  """Jitted step; `on_device_data` slices the batch from device-resident arrays.

  On device: step(state, window_x, window_y, window_start), the training rows in the
  order of the example-order window holding this step (feed.DeviceFeed).
  Otherwise: step(state, x, y) with x, y already arranged and batch-sharded.
  """
  update, arrangement = make_update(model, optimizer, lr_schedule, shape, mesh, **options)
  if on_device_data:
    update = sliced(update, arrangement, mesh)
  return jax.jit(update, donate_argnums=0)


def trial_hyperparameters(learning_rate_scale: float, momentum: float, data_seed: int):
  """The per-trial inputs of `make_trial_update`, as one float32 vector (one buffer)."""
  if not 0 <= data_seed < 2**24:
    raise ValueError(f'train.data_seed={data_seed}: must be in [0, 2^24) (exact in float32)')
  return np.asarray([learning_rate_scale, momentum, data_seed], np.float32)


def make_trial_update(model, optim_config, lr_schedule, shape: StepShape, mesh: Mesh, *,
                      noise_scale: bool, noise_scale_ema: float, augment: Callable | None,
                      packed: bool = False):
  """update(state, hyper, x, y) for every trial that differs only in peak learning rate,
  momentum and data seed, given as `hyper` (see trial_hyperparameters): one compiled
  program then serves a whole sweep, and vmapping it packs trials (packed.py)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from mbx.optim import build_optimizer  # pylint: disable=import-outside-toplevel

  def update(state, hyper, x, y):
    optimizer = build_optimizer(dataclasses.replace(optim_config, momentum=hyper[1]))
    schedule = lambda examples: hyper[0] * lr_schedule(examples)
    trial_update, _ = make_update(model, optimizer, schedule, shape, mesh,
                                  noise_scale=noise_scale, noise_scale_ema=noise_scale_ema,
                                  data_seed=hyper[2].astype(jnp.int32), augment=augment,
                                  packed=packed)
    return trial_update(state, x, y)

  arrangement = device_major_arrangement(shape.batch_size, mesh.devices.size,
                                         shape.num_micro_batches)
  return update, arrangement


def make_eval_step(model):
  """Sums of loss and correct predictions over a padded batch (mask = real rows)."""
  @jax.jit
  def eval_step(params, model_state, x, y, mask):
    logits, _ = apply_model(model, params, model_state, x, train=False)
    mask = mask.astype(jnp.float32)
    return {'loss_sum': jnp.sum(cross_entropy(logits, y) * mask),
            'correct': jnp.sum((jnp.argmax(logits, -1) == y) * mask),
            'count': jnp.sum(mask)}
  return eval_step
