"""The training loss f(θ) of a trained model over a fixed dataset, as a function of flat parameters.

f is the mean softmax cross-entropy over every example of the data (the full training split or
a stated subset), computed in float32, in batches that are sharded over the 'data' mesh axis
(parameters replicated; XLA all-reduces the per-device sums). The model runs in inference mode
(`train=False`): BatchNorm uses its running averages and dropout is off, so f is a
deterministic function of θ, as sharpness and curvature need (Keskar et al. 2017 measure the
training loss; PyHessian evaluates in eval mode too).

Parameters are flattened with `jax.flatten_util.ravel_pytree`, the vector space that SciPy,
Lanczos and random directions work in.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mbx import data as data_lib
from mbx import models as models_lib
from mbx.training import feed as feed_lib
from mbx.training.step import apply_model, cross_entropy, make_eval_step, make_mesh, replicated


@dataclasses.dataclass(frozen=True)
class Data:
  """Examples in memory and a sentence saying which they are."""
  x: np.ndarray
  y: np.ndarray
  description: str


def eval_split(config) -> str:
  return config.data.eval_split or data_lib.default_eval_split(config.data.name)


def load_data(config, split: str, subset: int | None = None) -> Data:
  """The examples of `split` (all, or the first `subset` in tfds's deterministic on-disk order,
  reading only those), preprocessed as for training but never augmented."""
  d = config.data
  if subset is None:
    x, y = data_lib.load_arrays(d.name, split, d.data_dir, d.download)
    return Data(x, y, f'{d.name} {split} split, all {len(x)} examples, no augmentation')
  source = data_lib.random_access_source(d.name, split, d.data_dir, d.download)
  total = len(source)
  x, y = source[np.arange(min(subset, total))]
  return Data(np.asarray(x, np.float32), np.asarray(y, np.int32),
              f'{d.name} {split} split, the first {len(x)} of {total} examples (tfds on-disk '
              'order), no augmentation')


def build_model_float32(config):
  """The run's model with float32 compute, whatever `model.dtype` it was trained with."""
  info = data_lib.dataset_info(config.data.name, config.data.data_dir)
  return models_lib.build_model(config.model.name, num_classes=info.num_classes,
                                options=config.model.options, dtype=jnp.float32)


@functools.lru_cache(maxsize=32)
def _batch_functions(model, treedef, leaf_shapes):
  """Jitted per-batch sums for a model and parameter layout, compiled once per process."""
  unravel = ravel_pytree(jax.tree.unflatten(
      treedef, [np.zeros(shape, np.float32) for shape in leaf_shapes]))[1]

  def loss_sum(w, model_state, x, y, mask):
    logits, _ = apply_model(model, unravel(w), model_state, x, train=False)
    return jnp.sum(cross_entropy(logits, y) * mask)

  def hvp_sum(w, v, model_state, x, y, mask):
    # Forward-over-reverse: the jvp of the gradient (Pearlmutter 1994).
    gradient = lambda w: jax.grad(loss_sum)(w, model_state, x, y, mask)
    return jax.jvp(gradient, (w,), (v,))[1]

  return (jax.jit(loss_sum), jax.jit(jax.value_and_grad(loss_sum)), jax.jit(hvp_sum),
          make_eval_step(model))


class LossFunction:
  """f(w) = mean cross-entropy of `model` over `data` at flat parameters w, with its gradient,
  Hessian-vector products and accuracy; `theta` is the point the analysis is about."""

  def __init__(self, model, params, model_state, data: Data, *, batch_size: int = 1000,
               mesh=None):
    self.mesh = mesh if mesh is not None else make_mesh()
    self.model = model
    self.data = data
    self.count = len(data.x)
    self.batch_size = batch_size
    self.batches = feed_lib.eval_batches(data.x, data.y, batch_size, self.mesh)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    theta, self.unravel = ravel_pytree(params)
    self.theta = jax.device_put(theta, replicated(self.mesh))
    self.dim = int(theta.size)
    self.model_state = jax.device_put(model_state or {}, replicated(self.mesh))
    self.has_batch_norm = 'batch_stats' in (model_state or {})
    leaves, treedef = jax.tree.flatten(params)
    (self._loss_sum, self._value_and_grad_sum, self._hvp_sum,
     self._eval_step) = _batch_functions(model, treedef, tuple(leaf.shape for leaf in leaves))

  @property
  def mode(self) -> str:
    """How the model was evaluated, for the outputs."""
    bn = ('BatchNorm in inference mode (running averages)' if self.has_batch_norm
          else 'no BatchNorm')
    return f'inference mode (train=False): {bn}, dropout off; float32'

  def _put(self, w) -> jax.Array:
    return jax.device_put(jnp.asarray(w, jnp.float32), replicated(self.mesh))

  def loss(self, w=None) -> float:
    """f(w) (default w = theta)."""
    w = self.theta if w is None else self._put(w)
    total = sum(self._loss_sum(w, self.model_state, x, y, mask) for x, y, mask in self.batches)
    return float(total) / self.count

  def value_and_grad(self, w=None) -> tuple[float, jax.Array]:
    """(f(w), ∇f(w)) with the gradient as a flat float32 array."""
    w = self.theta if w is None else self._put(w)
    value, grad = 0.0, jnp.zeros_like(w)
    for x, y, mask in self.batches:
      v, g = self._value_and_grad_sum(w, self.model_state, x, y, mask)
      value, grad = value + v, grad + g
    return float(value) / self.count, grad / self.count

  def hvp(self, v, w=None) -> jax.Array:
    """∇²f(w) v, accumulated over all batches (default w = theta)."""
    w = self.theta if w is None else self._put(w)
    v = self._put(v)
    total = jnp.zeros_like(w)
    for x, y, mask in self.batches:
      total = total + self._hvp_sum(w, v, self.model_state, x, y, mask)
    return total / self.count

  def evaluate(self, params=None, model_state=None) -> dict[str, float]:
    """Loss and accuracy at a parameter tree, summed exactly as the trainer's evaluation does
    (same eval step, batches and order), so the numbers match a run's records bit for bit."""
    params = self.unravel(self.theta) if params is None else params
    model_state = self.model_state if model_state is None else model_state
    params, model_state = jax.device_put((params, model_state), replicated(self.mesh))
    totals = None
    for x, y, mask in self.batches:
      sums = self._eval_step(params, model_state, x, y, mask)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {'loss': float(totals['loss_sum']) / count,
            'accuracy': float(totals['correct']) / count}


def parameters_sha256(params, model_state) -> str:
  """A fingerprint of a checkpoint's weights: the same run directory and step hold other
  weights once the run is retrained (e.g. by newer code)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves((params, model_state)):
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


def from_run(run, step: int | None = None, *, split: str | None = None,
             subset: int | None = None, batch_size: int | None = None,
             mesh=None) -> tuple[LossFunction, dict[str, Any]]:
  """The loss over a run's training split (or `split`) at its checkpoint `step` (default: the
  latest), and the checkpoint's meta with its fingerprint. `batch_size` defaults to the run's eval batch size, which
  makes `evaluate` reproduce the run's recorded metrics exactly."""
  config = run.config
  steps = run.checkpoint_steps()
  if not steps:
    raise FileNotFoundError(f'{run.workdir}: no checkpoints to analyse')
  step = steps[-1] if step is None else step
  params, model_state, meta = run.restore(step)
  split = config.data.train_split if split is None else split
  loss = LossFunction(build_model_float32(config), params, model_state,
                      load_data(config, split, subset),
                      batch_size=batch_size or config.train.eval_batch_size, mesh=mesh)
  return loss, {**meta, 'step': step,
                'parameters_sha256': parameters_sha256(params, model_state)}
