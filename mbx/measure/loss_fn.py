"""The training loss f(θ) of a trained model over a fixed dataset, as a function of flat parameters.

f is the task's mean loss (softmax cross-entropy for classification) over every example of the
data (the full training split or a stated subset), computed in float32, in batches that are sharded over the 'data' mesh axis
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

from mbx.tasks import weighted_sum

from mbx.training import feed as feed_lib
from mbx.training.step import apply_model, make_eval_step, make_mesh, replicated
from mbx.training.workload import Workload, resolve


@dataclasses.dataclass(frozen=True)
class Data:
  """Examples in memory (a batch dict of numpy arrays) and a sentence saying which they are."""
  rows: dict[str, np.ndarray]
  description: str

  def __len__(self) -> int:
    return len(self.rows['targets'])


def load_data(workload: Workload, split: str, subset: int | None = None) -> Data:
  """The examples of `split` (all, or the first `subset` in the dataset's deterministic order,
  reading only those), preprocessed as for training but never augmented."""
  name = workload.dataset.name
  if subset is None:
    rows = workload.dataset.arrays(split)
    return Data(rows, f'{name} {split} split, all {len(rows["targets"])} examples, '
                'no augmentation')
  source = workload.dataset.source(split)
  total = len(source)
  rows = source[np.arange(min(subset, total))]
  return Data(rows, f'{name} {split} split, the first {len(rows["targets"])} of {total} '
              'examples (on-disk order), no augmentation')


@functools.lru_cache(maxsize=32)
def _batch_functions(model, task, treedef, leaf_shapes):
  """Jitted per-batch sums for a model and parameter layout, compiled once per process."""
  unravel = ravel_pytree(jax.tree.unflatten(
      treedef, [np.zeros(shape, np.float32) for shape in leaf_shapes]))[1]

  def loss_sum(w, model_state, batch, mask):
    outputs, _ = apply_model(model, unravel(w), model_state, batch['inputs'], train=False)
    weights = mask if 'weights' not in batch else batch['weights'] * mask.reshape(
        mask.shape + (1,) * (batch['weights'].ndim - 1))
    return weighted_sum(task.losses(outputs, batch), weights)

  def hvp_sum(w, v, model_state, batch, mask):
    # Forward-over-reverse: the jvp of the gradient (Pearlmutter 1994).
    gradient = lambda w: jax.grad(loss_sum)(w, model_state, batch, mask)
    return jax.jvp(gradient, (w,), (v,))[1]

  return (jax.jit(loss_sum), jax.jit(jax.value_and_grad(loss_sum)), jax.jit(hvp_sum),
          make_eval_step(model, task))


class LossFunction:
  """f(w) = the task's mean loss of `model` over `data` at flat parameters w, with its gradient,
  Hessian-vector products and the task's metrics; `theta` is the point the analysis is about."""

  def __init__(self, model, task, params, model_state, data: Data, *, batch_size: int = 1000,
               mesh=None):
    self.mesh = mesh if mesh is not None else make_mesh()
    self.model, self.task = model, task
    self.data = data
    self.batch_size = batch_size
    self.batches = feed_lib.eval_batches(data.rows, batch_size, self.mesh)
    # The summed weight: examples, or tokens / weighted examples when the data carry weights.
    weights = data.rows.get('weights')
    self.count = float(len(data) if weights is None else np.sum(weights))
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    theta, self.unravel = ravel_pytree(params)
    self.theta = jax.device_put(theta, replicated(self.mesh))
    self.dim = int(theta.size)
    self.model_state = jax.device_put(model_state or {}, replicated(self.mesh))
    self.has_batch_norm = 'batch_stats' in (model_state or {})
    leaves, treedef = jax.tree.flatten(params)
    (self._loss_sum, self._value_and_grad_sum, self._hvp_sum,
     self._eval_step) = _batch_functions(model, task, treedef,
                                         tuple(leaf.shape for leaf in leaves))

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
    total = sum(self._loss_sum(w, self.model_state, batch, mask) for batch, mask in self.batches)
    return float(total) / self.count

  def value_and_grad(self, w=None) -> tuple[float, jax.Array]:
    """(f(w), ∇f(w)) with the gradient as a flat float32 array."""
    w = self.theta if w is None else self._put(w)
    value, grad = 0.0, jnp.zeros_like(w)
    for batch, mask in self.batches:
      v, g = self._value_and_grad_sum(w, self.model_state, batch, mask)
      value, grad = value + v, grad + g
    return float(value) / self.count, grad / self.count

  def hvp(self, v, w=None) -> jax.Array:
    """∇²f(w) v, accumulated over all batches (default w = theta)."""
    w = self.theta if w is None else self._put(w)
    v = self._put(v)
    total = jnp.zeros_like(w)
    for batch, mask in self.batches:
      total = total + self._hvp_sum(w, v, self.model_state, batch, mask)
    return total / self.count

  def evaluate(self, params=None, model_state=None) -> dict[str, float]:
    """The task's metrics at a parameter tree, summed exactly as the trainer's evaluation does
    (same eval step, batches and order), so the numbers match a run's records bit for bit."""
    params = self.unravel(self.theta) if params is None else params
    model_state = self.model_state if model_state is None else model_state
    params, model_state = jax.device_put((params, model_state), replicated(self.mesh))
    totals = None
    for batch, mask in self.batches:
      sums = self._eval_step(params, model_state, batch, mask)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    return {k: float(v) for k, v in self.task.finalize(totals).items()}


def parameters_sha256(params, model_state) -> str:
  """A fingerprint of a checkpoint's weights: the same run directory and step hold other
  weights once the run is retrained (e.g. by newer code)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves((params, model_state)):
    digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()


def from_run(run, step: int | None = None, *, split: str | None = None,
             subset: int | None = None, batch_size: int | None = None, mesh=None,
             data=None) -> tuple[LossFunction, dict[str, Any]]:
  """The loss over a run's training split (or `split`) at its checkpoint `step` (default: the
  latest), and the checkpoint's meta with its fingerprint. `batch_size` defaults to the run's
  eval batch size, which makes `evaluate` reproduce the run's recorded metrics exactly.
  `data`: the run's ArrayDataset, for runs whose data were given from Python."""
  workload = resolve(run.config, data=data)
  if not run.checkpoint_steps:
    raise FileNotFoundError(f'{run.workdir}: no checkpoints to analyse')
  params, model_state, meta = run.restore(step)  # None: the newest that restores
  step = int(meta['step']) if step is None else step
  split = run.config.data.train_split if split is None else split
  loss = LossFunction(workload.model(float32=True), workload.task, params, model_state,
                      load_data(workload, split, subset),
                      batch_size=batch_size or run.config.train.eval_batch_size, mesh=mesh)
  return loss, {**meta, 'step': step, 'eval_split': workload.eval_split,
                'parameters_sha256': parameters_sha256(params, model_state)}
