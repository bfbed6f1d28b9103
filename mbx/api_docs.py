"""`python -m mbx.api_docs OUT_DIR`: the Python API reference, generated from the docstrings
with pdoc (`make api-docs` writes it to docs/api/, which is not committed)."""
from __future__ import annotations

import pathlib
import sys

# The layers in dependency order, each with every submodule (a package's __all__ would hide
# them); the `mbx` facade's lazy names are documented where they live.
PACKAGES = ('mbx.config', 'mbx.registry', 'mbx.data', 'mbx.models', 'mbx.tasks', 'mbx.optim',
            'mbx.training', 'mbx.measure', 'mbx.sweep', 'mbx.figures', 'mbx.cli')


def modules() -> list[str]:
  import importlib  # pylint: disable=import-outside-toplevel
  import pkgutil  # pylint: disable=import-outside-toplevel
  names = []
  for package in PACKAGES:
    names.append(package)
    module = importlib.import_module(package)
    if hasattr(module, '__path__'):
      names += [info.name for info in pkgutil.walk_packages(module.__path__, package + '.')
                if not info.name.endswith('__main__')]
  return names


def build(out_dir: str | pathlib.Path) -> pathlib.Path:
  import warnings  # pylint: disable=import-outside-toplevel
  import pdoc  # pylint: disable=import-outside-toplevel
  out_dir = pathlib.Path(out_dir)
  with warnings.catch_warnings():
    # pdoc cannot resolve the type annotations flax's dataclass fields inherit; they render
    # as text.
    warnings.simplefilter('ignore', UserWarning)
    pdoc.pdoc(*modules(), output_directory=out_dir)
  return out_dir / 'index.html'


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m mbx.api_docs OUT_DIR')
  print(f'written: {build(sys.argv[1])}')
