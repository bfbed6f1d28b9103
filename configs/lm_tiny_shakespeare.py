"""Character-level language model on tfds `tiny_shakespeare` (needs a prepared data_dir).

    tfds build tiny_shakespeare --data_dir DIR --file_format array_record   # once, online
    mbx train --config configs/lm_tiny_shakespeare.py data.data_dir=DIR

The corpus (~1.1 M characters, 65 distinct) comes in tfds's own train / validation / test
splits, one example each; tokenization is per character, the vocabulary being the sorted
character set of all three splits (mbx.data.text). The model and recipe are those of
configs/lm_kjv_small.py (4 layers x 128 wide, 4 heads, context 64; AdamW; 600 steps of 32
windows), so the two corpora can be compared at equal cost. For reference, nanoGPT's CPU
recipe on the same text (4 x 4 x 128, context 64, batch 12, 2,000 iterations) reports a
validation loss near 1.88 nats per character (2.7 bits); this config is not yet measured.
"""
import dataclasses
import pathlib

import mbx


def get_config() -> mbx.Config:
  small = mbx.load_config(pathlib.Path(__file__).with_name('lm_kjv_small.py'))
  return dataclasses.replace(
      small, data=mbx.DataConfig(name='tiny_shakespeare',
                                 options={'seq_len': 64, 'tokenizer': 'char'},
                                 eval_split='validation'),
      name='lm_tiny_shakespeare')
