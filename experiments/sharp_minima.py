"""Do large batches find sharper minima that generalise worse, on MNIST-1D?

Keskar et al. 2017 (arXiv 1609.04836): networks trained with a large batch (10% of the training
set) reach small-batch (256) training accuracy but test worse and sit in sharper minima. This
runs `mbx study sharp-minima` (mbx/study/sharp_minima.py, the protocol) on the MNIST-1D CNN
(configs/mnist1d_sharp_minima.py): SB = 256, LB = 400, FB = 4000, Adam LR tuned per B on
validation with seed 100, 5 paired seeds, every run stopped at training loss 0.01; ε-sharpness
(Keskar Tables 3-4), λ_max, tr(H), the Hessian density, the parametric plot (Fig. 3), and a
batch-size grid for sharpness vs B. LB and FB also train with SAM (Foret et al. 2021) at their
tuned LR, ρ ∈ {0.003, 0.01, 0.03, 0.1, 0.3} tuned on validation, paired with SB and with plain LB/FB
by seed: does SAM close the gap, flatten the minimum, and at what cost in steps and time?
The same command runs on your own config:

    mbx study sharp-minima --config my_config.py
    python experiments/sharp_minima.py           # ~90 min on a 2-core CPU (SAM: ~20 of them)
    python experiments/sharp_minima.py --quick   # 2 seeds, no grid (checking)

Outputs: results/sharp_minima/ (README.md, table, paired, runs, tuning, batch_size_grid as CSV
and Markdown, parametric_sb_lb.png, parametric_sb_fb.png, hessian_density.png,
sharpness_vs_batch_size.png, summary.json, analyses.json); run directories under
studies/sharp_minima/ (re-running reuses them and every analysis of the same checkpoint).
"""
import argparse
import pathlib

import mbx
import mbx.study

REPO = pathlib.Path(__file__).resolve().parents[1]
GRID = (32, 64, 128, 256, 512, 1024, 2000, 4000)
SAM_RHOS = (0.003, 0.01, 0.03, 0.1, 0.3)  # 0.003 added: 0.01 won at the lower edge


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--workers', type=int, default=1)
  args = parser.parse_args()
  name = 'sharp_minima_quick' if args.quick else 'sharp_minima'
  config = mbx.load_config(REPO / 'configs' / 'mnist1d_sharp_minima.py')
  options = mbx.study.options_of('sharp-minima', quick=args.quick,
                                 grid=() if args.quick else GRID,
                                 sam_rhos=(0.03, 0.1) if args.quick else SAM_RHOS)
  summary = mbx.study.run('sharp-minima', config, REPO / 'results' / name, options=options,
                          runs=REPO / 'studies' / name, quick=args.quick, workers=args.workers)
  print('\n'.join(summary['findings']))


if __name__ == '__main__':
  main()
