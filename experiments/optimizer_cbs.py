"""Does the optimizer move the critical batch size? Six optimizers on MNIST-1D, AdamW vs Muon
on the KJV language model, each through `mbx study cbs` with the committed CBS protocol.

    python experiments/optimizer_cbs.py                  # both parts, then the summary
    python experiments/optimizer_cbs.py --part mnist1d   # configs/optimizer_cbs_mnist1d_cnn.py
    python experiments/optimizer_cbs.py --part kjv       # configs/optimizer_cbs_lm_kjv.py

Outputs: results/optimizer_cbs/README.md (the answer, with its uncertainty), and per part
results/optimizer_cbs/<part>/ (the cbs study's tables and figures: S(B) of every optimizer
on one figure, B_crit and S_min with bootstrap CIs, the fit's sensitivity, the best-LR
exponent); run directories under studies/optimizer_cbs/<part>/ (re-running reuses them).
"""
import argparse
import pathlib
import time

import mbx.study
from mbx.sweep import load_sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = {'mnist1d': 'optimizer_cbs_mnist1d_cnn.py', 'kjv': 'optimizer_cbs_lm_kjv.py'}


def run_part(part: str, workers: int) -> dict:
  sweep = load_sweep(REPO / 'configs' / PARTS[part])
  options = mbx.study.options_of('cbs', grid=sweep, local_cbs=False)
  return mbx.study.run('cbs', sweep.base, REPO / 'results' / 'optimizer_cbs' / part,
                       options=options, runs=REPO / 'studies' / 'optimizer_cbs' / part,
                       workers=workers)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--part', choices=(*PARTS, 'all'), default='all')
  parser.add_argument('--workers', type=int, default=2)
  args = parser.parse_args()
  for part in PARTS if args.part == 'all' else (args.part,):
    start = time.perf_counter()
    summary = run_part(part, args.workers)
    print(f'{part}: {(time.perf_counter() - start) / 60:.1f} min')
    print('\n'.join(summary['findings']))


if __name__ == '__main__':
  main()
