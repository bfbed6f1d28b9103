"""Is the mbx training loop as fast as a bare `jax.jit` loop?

Question: how much does mbx's loop (on-device batch gathering from the
(seed, epoch) example order, in-step metrics, interval logging, progress bar)
cost against the fastest plain JAX loop: one jitted Adam step on a batch that
already sits on the device, called in a Python loop.

    python experiments/bench_step.py            # ~2 min on a 2-core CPU
    python experiments/bench_step.py --steps-scale 0.2   # quick look
    python experiments/bench_step.py --writers           # TensorBoard on vs off (whole run)

Model: the MNIST-1D CNN, Adam, B in {1, 32, 512, 4000}. Each measurement is the
median of `--repeats` timed runs after a warm-up; mbx's throughput is its
training time as recorded in status.json (`train_time`: the loop between events,
excluding compilation, evaluation and checkpoint writes) and, separately, the
whole-run wall time. Prints a Markdown table; results/bench_step.md holds one.
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import tempfile
import time

import jax
import optax

import mbx
from mbx import data, models
from mbx.tasks.classification import cross_entropy

STEPS = {1: 20000, 32: 6000, 512: 1500, 4000: 250}


def in_fresh_process(function, *args):
  """function(*args) in a spawned process that then exits by itself (closed, not terminated:
  torch.compile's worker pool would leak its semaphores)."""
  pool = multiprocessing.get_context('spawn').Pool(1)
  try:
    return pool.apply(function, args)
  finally:
    pool.close()
    pool.join()


def bare_loop(batch_size: int, steps: int, x_all, y_all, model_name: str = 'cnn1d',
              model_options=None) -> float:
  """Examples/s of the plainest fast JAX loop: fixed on-device batch, jitted step."""
  model = models.build_model(model_name, num_classes=10, options=model_options or {})
  params = model.init(jax.random.key(0), x_all[:1], train=False)['params']
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      return cross_entropy(model.apply({'params': p}, x, train=True), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  x = jax.device_put(x_all[:batch_size])
  y = jax.device_put(y_all[:batch_size])
  params, opt_state, loss = step(params, opt_state, x, y)
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, x, y)
  loss.block_until_ready()
  return batch_size * steps / (time.perf_counter() - start)


def mbx_step_alone(batch_size: int, steps: int, model_name: str = 'cnn1d',
                   model_options=None) -> float:
  """Examples/s of mbx's own compiled train step called in a bare Python loop on one fixed
  order window: the step without the loop and the feed (each epoch's shuffle), so that the
  mbx loop / bare jit ratio splits into the step's share and the loop's."""
  from mbx.training import feed as feed_lib  # pylint: disable=import-outside-toplevel
  from mbx.training import loop, programs  # pylint: disable=import-outside-toplevel
  from mbx.training.workload import resolve  # pylint: disable=import-outside-toplevel
  config = _config(batch_size, steps, model_name, model_options)
  s = loop.setup(resolve(config))
  state = programs.initial_state(s, config.train.seed)
  (step, hyper), = programs.compiled_steps(s, [s.plan.shape_at(0)], state, [config])
  feed = feed_lib.DeviceFeed(s.train_rows, s.mesh, seed=0, max_batch_size=s.plan.max_batch_size)
  args = feed.step_args(0, batch_size)  # the slice offset runs past the window: it clamps
  state, metrics = step(state, hyper, *args)
  metrics.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, hyper, *args)
  metrics.block_until_ready()
  return batch_size * steps / (time.perf_counter() - start)


def _config(batch_size: int, steps: int, model_name: str, model_options, *,
            log_every: int | None = None, **train) -> mbx.Config:
  return mbx.Config(
      model=mbx.ModelConfig(name=model_name, options=dict(model_options or {})),
      optim=mbx.OptimConfig(name='adam', learning_rate=1e-3),
      train=mbx.TrainConfig(batch_size=batch_size, duration=f'{steps} steps',
                            log_every=f'{log_every or max(steps // 10, 1)} steps',
                            eval_every=f'{steps} steps', checkpoint_every=None, **train),
      name='bench')


def mbx_loop(batch_size: int, steps: int, model_name: str = 'cnn1d', model_options=None,
             noise_scale: bool = False, tensorboard: bool = True,
             log_every: int | None = None,
             micro_batch_size: int | str | None = None) -> tuple[float, float, object]:
  """(examples/s of the training loop, examples/s over the whole run, the micro-batch size the
  run recorded: None, or 'fastest=<m>' for micro_batch_size='fastest') for mbx.train."""
  config = _config(batch_size, steps, model_name, model_options, log_every=log_every,
                   noise_scale=noise_scale, micro_batch_size=micro_batch_size)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    run = mbx.train(config, workdir, quiet=True,
                    trackers=('tensorboard',) if tensorboard else ())
    wall = time.perf_counter() - start
  examples = batch_size * (steps - 1)  # the first step compiles and is timed apart
  return (examples / run.status['train_time'], batch_size * steps / wall,
          run.config.train.micro_batch_size)


def writer_overhead(args) -> None:
  """Examples/s with and without TensorBoard event files, logging 100 rows per run: the
  training loop (status.json train_time) and the whole run (import and file setup included)."""
  print('| batch | steps | log every | loop, no writer (ex/s) | loop, TensorBoard | ratio | '
        'whole run, no writer | whole run, TensorBoard | ratio |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for batch_size in args.batch_sizes:
    steps = max(int(STEPS.get(batch_size, 1000) * args.steps_scale), 10)
    log_every = max(steps // 100, 1)
    rates = {True: [], False: []}
    for _ in range(args.repeats):
      for tensorboard in (False, True):  # interleaved: drifts of the machine hit both
        rates[tensorboard].append(mbx_loop(batch_size, steps, tensorboard=tensorboard,
                                           log_every=log_every))
    (loop_off, whole_off), (loop_on, whole_on) = (
        [statistics.median(r[i] for r in rates[k]) for i in (0, 1)] for k in (False, True))
    print(f'| {batch_size} | {steps} | {log_every} | {loop_off:,.0f} | {loop_on:,.0f} | '
          f'{loop_on / loop_off:.3f} | {whole_off:,.0f} | {whole_on:,.0f} | '
          f'{whole_on / whole_off:.3f} |', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps-scale', type=float, default=1.0)
  parser.add_argument('--batch-sizes', type=int, nargs='*', default=sorted(STEPS))
  parser.add_argument('--writers', action='store_true',
                      help='instead: the cost of TensorBoard event files (100 log rows per run)')
  args = parser.parse_args()
  if args.writers:
    writer_overhead(args)
    return
  x_all, y_all = data.load_arrays('mnist1d', 'train')
  rows = []
  for batch_size in args.batch_sizes:
    steps = max(int(STEPS.get(batch_size, 1000) * args.steps_scale), 10)
    bare, loop, whole = [], [], []
    for _ in range(args.repeats):
      bare.append(bare_loop(batch_size, steps, x_all, y_all))
      loop_rate, whole_rate, _ = mbx_loop(batch_size, steps)
      loop.append(loop_rate)
      whole.append(whole_rate)
    b, l, w = (statistics.median(v) for v in (bare, loop, whole))
    rows.append((batch_size, steps, b, l, l / b, w))
  print(f'Machine: {platform.processor() or platform.machine()}, {jax.device_count()} '
        f'{jax.default_backend()} device(s), Python {platform.python_version()}, '
        f'jax {jax.__version__}, flax {__import__("flax").__version__}, '
        f'optax {optax.__version__}; median of {args.repeats}\n')
  print('| batch | steps | bare jit loop (ex/s) | mbx loop (ex/s) | mbx / bare | '
        'mbx whole run incl. compile+eval+ckpt (ex/s) |')
  print('|---:|---:|---:|---:|---:|---:|')
  for batch_size, steps, b, l, ratio, w in rows:
    print(f'| {batch_size} | {steps} | {b:,.0f} | {l:,.0f} | {ratio:.2f} | {w:,.0f} |')


if __name__ == '__main__':
  main()
