"""The first check on a lent accelerator, in one call: speed against the chip's peak, AutoBatch
against a real out-of-memory boundary, and packed trials against one-by-one.

    python experiments/gpu_check.py                           # one GPU, <= 6 min -> results/gpu_check.md
    python experiments/gpu_check.py --dry-run --out /tmp/g.md  # tiny shapes on any backend (CI)

1. Train step at large batch in bfloat16 for ResNet-18 (CIFAR-shaped 32x32x3), the small ViT
   (6 x 192, patch 4) and the language-model Transformer of configs/lm_kjv_large.py (6 x 384,
   context 256): step time, examples/s (tokens/s), TFLOP/s and model-FLOPs utilisation, with
   FLOPs counted from the layers by the PaLM convention (mbx/measure/flops.py), and XLA's
   `cost_analysis()` FLOPs beside them as a cross-check.
2. AutoBatch's predicted largest per-device batch at 100% of the allocator's limit against the
   real boundary, found by running the step in fresh subprocesses (galloping, then bisection
   to 2%): configs/lm_kjv_large.py with context 1024, so the boundary lies inside the corpus.
   A build whose `memory_analysis()` returns zeros is detected and said.
3. The critical-batch-size study's sweep at B = 16 (12 MNIST-1D CNN trials), packed into one
   vmapped program against one after the other (whole wall time; experiments/bench_packed.py).

Each section records its own wall time; a section that fails is reported and the others run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import sys
import time
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_packed import time_sweep  # pylint: disable=wrong-import-position
from bench_step import in_fresh_process  # pylint: disable=wrong-import-position

from mbx import models  # pylint: disable=wrong-import-position
from mbx.config import ConfigError, OptimConfig, load_config  # pylint: disable=wrong-import-position
from mbx.measure.flops import train_flops_per_example  # pylint: disable=wrong-import-position
from mbx.optim import build_optimizer, learning_rate_schedule  # pylint: disable=wrong-import-position
from mbx.optim.optimizers import resolve_optimizer  # pylint: disable=wrong-import-position
from mbx.tasks import Classification  # pylint: disable=wrong-import-position
from mbx.training import autobatch as autobatch_lib  # pylint: disable=wrong-import-position
from mbx.training import step as step_lib  # pylint: disable=wrong-import-position
from mbx.training.plan import StepShape  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peak per device (vendor datasheets, no sparsity); matched in order
# against jax's device_kind.
PEAK_BF16_FLOPS = (
    ('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12),
    ('H200 NVL', 835e12), ('H200', 989e12), ('GH200', 989e12),
    ('A100', 312e12), ('L40S', 362e12), ('L4', 121e12),
    ('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12),
)


@dataclasses.dataclass(frozen=True)
class StepCase:
  label: str
  model: str
  options: dict
  example_shape: tuple[int, ...]
  per_device_batch: int
  optimizer: str
  num_classes: int = 10
  tokens: bool = False  # inputs are token ids, targets one per position


LM_OPTIONS = {'num_layers': 6, 'width': 384, 'num_heads': 6, 'max_len': 256,
              'positions': 'learned'}
CASES = (
    StepCase('ResNet-18', 'resnet18', {}, (32, 32, 3), 1024, 'momentum'),
    StepCase('ViT (6 x 192, patch 4)', 'vit', {}, (32, 32, 3), 1024, 'adamw'),
    StepCase('LM Transformer (6 x 384)', 'transformer', LM_OPTIONS, (256,), 256, 'adamw',
             num_classes=64, tokens=True),
)
DRY_CASES = (  # the same models, small enough to compile in seconds on a CPU
    StepCase('ResNet-18 (width 8)', 'resnet18', {'width': 8}, (16, 16, 3), 2, 'momentum'),
    StepCase('ViT (1 x 32, patch 4)', 'vit', {'num_layers': 1, 'hidden': 32, 'num_heads': 2,
                                               'mlp_dim': 64}, (16, 16, 3), 2, 'adamw'),
    StepCase('LM Transformer (1 x 32)', 'transformer',
             {'num_layers': 1, 'width': 32, 'num_heads': 2, 'max_len': 16}, (16,), 2, 'adamw',
             num_classes=64, tokens=True),
)


def peak_bf16_flops(device_kind: str) -> float | None:
  return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_kind), None)


def time_step(case: StepCase, steps: int) -> dict:
  """Seconds per step of mbx's bf16 train step on a fixed on-device batch, with the analytic
  and XLA FLOPs of that step per device."""
  mesh = step_lib.make_mesh()
  batch = case.per_device_batch * mesh.devices.size
  model = models.build_model(case.model, num_classes=case.num_classes, options=case.options,
                             dtype=jnp.bfloat16,
                             batch_norm_axis_name=step_lib.batch_norm_axis_name(mesh))
  optim = OptimConfig(name=case.optimizer,
                      learning_rate=0.1 if case.optimizer == 'momentum' else 1e-3)
  schedule = learning_rate_schedule(optim, batch_size=batch, examples_per_epoch=50000,
                                    total_examples=10**7)
  task = Classification()
  parts = step_lib.StepParts(model=model, task=task, optimizer=resolve_optimizer(optim),
                             lr_schedule=schedule)
  step = step_lib.make_step(parts,
                            StepShape(batch, 1, 'unrolled'), mesh, on_device_data=False)
  input_dtype = jnp.int32 if case.tokens else jnp.float32
  state = step_lib.init_train_state(model, build_optimizer(optim),
                                    jnp.zeros((1, *case.example_shape), input_dtype), seed=0,
                                    mesh=mesh, task=task)
  sharding = step_lib.batch_sharded(mesh)
  hyper = jax.device_put(step_lib.trial_hyperparameters(1.0, optim.momentum, 0),
                         step_lib.replicated(mesh))
  target_shape = (batch, *case.example_shape) if case.tokens else (batch,)
  arrays = {'inputs': jax.device_put(jnp.zeros((batch, *case.example_shape), input_dtype),
                                     sharding),
            'targets': jax.device_put(jnp.zeros(target_shape, jnp.int32), sharding)}
  lowered = step.lower(state, hyper, arrays)
  cost = lowered.cost_analysis()
  xla_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost).get('flops', 0.0))
  compiled = lowered.compile()
  for _ in range(2):
    state, _ = compiled(state, hyper, arrays)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = compiled(state, hyper, arrays)
  jax.block_until_ready(state)
  seconds = (time.perf_counter() - start) / steps
  per_example = train_flops_per_example(model, case.example_shape, input_dtype=input_dtype)
  return {'seconds': seconds, 'analytic_flops': per_example * case.per_device_batch,
          'xla_flops': xla_flops / mesh.devices.size if xla_flops else float('nan')}


def step_section(cases, steps: int) -> list[str]:
  kind = jax.devices()[0].device_kind
  peak = peak_bf16_flops(kind)
  lines = [f'{jax.device_count()} x {kind}; dense bf16 peak '
           f'{f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (add it to PEAK_BF16_FLOPS)"}'
           f' per device; {steps} timed steps after 2 warm-up steps.', '',
           '| model | input | batch / device | step (ms) | examples/s | tokens/s | '
           'TFLOP/s / device | MFU | XLA / analytic FLOPs |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for case in cases:
    try:
      m = time_step(case, steps)
    except Exception as error:  # pylint: disable=broad-except  (reported; the rest goes on)
      lines.append(f'| {case.label} | failed: {type(error).__name__}: '
                   f'{str(error).splitlines()[0][:200]} |||||||')
      continue
    achieved = m['analytic_flops'] / m['seconds']
    examples = case.per_device_batch * jax.device_count() / m['seconds']
    tokens = f'{examples * case.example_shape[0]:,.0f}' if case.tokens else ''
    lines.append(f'| {case.label} | {"x".join(map(str, case.example_shape))} | '
                 f'{case.per_device_batch} | {m["seconds"] * 1e3:.2f} | {examples:,.0f} | '
                 f'{tokens} | {achieved / 1e12:.2f} | '
                 f'{f"{achieved / peak:.1%}" if peak else "n/a"} | '
                 f'{m["xla_flops"] / m["analytic_flops"]:.2f} |')
  lines += ['', 'MFU = analytic training FLOPs per step (matmuls only, 3x the forward pass, '
            'full causal attention) / (step time x peak). XLA / analytic > 1 counts the '
            "elementwise work XLA's cost analysis includes."]
  return lines


def oom_config(dry_run: bool):
  if dry_run:  # the same code path with a model that compiles in a fraction of a second
    return load_config(REPO / 'configs/mnist1d_mlp.py')
  return load_config(REPO / 'configs/lm_kjv_large.py', [
      'data.options.seq_len=1024', 'model.options.max_len=1024'])


def oom_section(dry_run: bool) -> list[str]:
  config = oom_config(dry_run)
  lines = [('Config: configs/mnist1d_mlp.py (dry run).' if dry_run else
            f'Config: configs/lm_kjv_large.py with {config.data.options["seq_len"]}-token '
            f'windows, {config.model.dtype}.'), '']
  try:
    budget = 256 * 2**20 if jax.default_backend() == 'cpu' else None
    predicted = autobatch_lib.autobatch(config, budget, memory_fraction=1.0)
  except RuntimeError as error:  # e.g. memory_analysis() returned zeros
    return lines + [f'AutoBatch could not predict: {error}']
  lines.append(f'AutoBatch: largest per-device batch {predicted.largest_per_device_batch} '
               f'within {autobatch_lib.format_bytes(predicted.budget_bytes)} '
               f'({predicted.compiles} compiles).')
  try:
    result = autobatch_lib.verify_oom(config, relative_resolution=0.02)
  except ConfigError as error:
    return lines + ['', f'Real boundary not measured here: {error}.']
  ratio = result['ratio']
  lines += ['', f'Real boundary on {result["device"]}: runs at {result["real"]}, out of memory '
            f'at {result["real_first_oom"]} per device; predicted / real = {ratio:.3f} '
            f'({"conservative" if ratio <= 1 else "over-predicts: a run at the prediction fails"}'
            f'). Probes (per-device batch: ran): {result["probes"]}.']
  return lines


def packed_section(dry_run: bool) -> list[str]:
  batch_size, budget_scale, learning_rates = (4, 0.001, 1) if dry_run else (16, 1.0, None)
  runs = [(time_sweep(batch_size, budget_scale, pack, learning_rates) if dry_run else
           in_fresh_process(time_sweep, batch_size, budget_scale, pack))  # fresh: each compiles
          for pack in (False, True)]
  solo, packed = runs
  return [f'The critical-batch-size sweep of configs/cbs_mnist1d_cnn.py at B = {batch_size} '
          f'(momentum SGD, {packed["trials"]} trials, {packed["budget"]} each, stopped at the '
          'target), packed against one by one: the whole `run_sweep` wall time (data, compiles, '
          'evaluations and checkpoints included; experiments/bench_packed.py).', '',
          '| batch | one-by-one (s) | packed (s) | speed-up | loops one-by-one / packed (s) |',
          '|---:|---:|---:|---:|---:|',
          f'| {batch_size} | {solo["wall"]:.1f} | {packed["wall"]:.1f} | '
          f'{solo["wall"] / packed["wall"]:.2f}x | {solo["train_time"]:.2f} / '
          f'{packed["train_time"]:.2f} |']


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dry-run', action='store_true',
                      help='tiny shapes and sweeps: checks the script on any backend in seconds')
  parser.add_argument('--steps', type=int, default=None, help='timed steps per model')
  parser.add_argument('--skip', nargs='*', default=(), choices=('step', 'oom', 'packed'))
  parser.add_argument('--out', default=None, help='default: results/gpu_check.md (not with '
                                                   '--dry-run, which needs --out)')
  args = parser.parse_args(argv)
  if args.dry_run and args.out is None:
    parser.error('--dry-run needs --out: results/gpu_check.md holds the real measurement')
  if not args.dry_run and jax.default_backend() == 'cpu':
    parser.error('the JAX backend is cpu: this check is for a GPU or TPU (use --dry-run)')
  out = pathlib.Path(args.out or REPO / 'results' / 'gpu_check.md')
  steps = args.steps or (2 if args.dry_run else 20)
  command = 'python ' + ' '.join([os.path.relpath(sys.argv[0])] + (argv or sys.argv[1:]))
  import flax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  text = ['# GPU check' + (' (dry run: tiny shapes, not a measurement)' if args.dry_run else ''),
          '', f'Command: `{command}` ({time.strftime("%Y-%m-%d")})', '',
          f'- devices: {jax.device_count()} x {jax.devices()[0].device_kind} '
          f'({jax.default_backend()}); host: {platform.machine()}, {os.cpu_count()} CPUs',
          f'- Python {platform.python_version()}, jax {jax.__version__}, jaxlib '
          f'{jaxlib.__version__}, flax {flax.__version__}', '']
  sections = (('step', '1. Train step at large batch (bf16)',
               lambda: step_section(DRY_CASES if args.dry_run else CASES, steps)),
              ('oom', '2. AutoBatch against the real out-of-memory boundary',
               lambda: oom_section(args.dry_run)),
              ('packed', '3. Packed trials against one-by-one',
               lambda: packed_section(args.dry_run)))
  total = time.perf_counter()
  for key, title, run in sections:
    if key in args.skip:
      continue
    start = time.perf_counter()
    try:
      body = run()
    except Exception:  # pylint: disable=broad-except  (reported; the other sections still run)
      body = ['Failed:', '', '```', traceback.format_exc(limit=4).strip(), '```']
    text += [f'## {title}', '', *body, '', f'({time.perf_counter() - start:.0f} s)', '']
    print('\n'.join(text[-len(body) - 4:]), flush=True)
  text.append(f'Total wall time: {time.perf_counter() - total:.0f} s.')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text('\n'.join(text) + '\n')
  print(f'written to {out}')


if __name__ == '__main__':
  main()
