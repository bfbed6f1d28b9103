"""`mbx autobatch`: the largest batch that fits a memory budget (mbx/training/autobatch.py)."""
from __future__ import annotations

from mbx import config as config_lib
from mbx.optim import declared as optim_declared


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'autobatch', help='the largest batch that fits in memory, from the compiled step '
      '(no trial runs)')
  parser.add_argument('--config', required=True, help='configs/<name>.py')
  parser.add_argument('--budget', default=None,
                      help='bytes per device, e.g. 2GiB; required on CPU (default: '
                      'train.autobatch_budget, else --memory-fraction of the device memory)')
  parser.add_argument('--memory-fraction', type=float,
                      default=config_lib.DEFAULT_MEMORY_FRACTION,
                      help='of the allocator limit, on GPU/TPU (default %(default)s)')
  parser.add_argument('--verify-oom', action='store_true',
                      help='GPU/TPU only, untested: also find the real out-of-memory boundary by '
                      'bisection, running the step in subprocesses')
  parser.add_argument('overrides', nargs='*', help='section.field=value')
  parser.set_defaults(run=_run)


def _run(args) -> None:
  config = config_lib.load_config(args.config, args.overrides)
  optim_declared.validate(config)
  budget = None if args.budget is None else config_lib.parse_bytes(args.budget, '--budget')
  from mbx.training import autobatch as autobatch_lib  # pylint: disable=import-outside-toplevel
  budget = budget or autobatch_lib.config_budget(config)
  print(autobatch_lib.autobatch(config, budget, args.memory_fraction).describe())
  if args.verify_oom:
    result = autobatch_lib.verify_oom(config)
    budget = autobatch_lib.format_bytes(result['budget_bytes'])
    print(f'\nout-of-memory check on {result["device"]} at 100% of {budget}: predicted '
          f'{result["predicted"]}, real {result["real"]} (first OOM at '
          f'{result["real_first_oom"]}), predicted/real '
          f'{result["ratio"]:.3f}\nprobes (per-device batch: ran): {result["probes"]}')
