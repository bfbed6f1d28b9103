"""Analytic model FLOPs (mbx/measure/flops.py) against hand counts and the PaLM formula."""
from __future__ import annotations

import jax.numpy as jnp
import pytest

from mbx import models
from mbx.measure.flops import train_flops_per_example


def test_mlp_counts_two_flops_per_weight_three_times():
  model = models.build_model('mlp', num_classes=10, options={'hidden': (100, 100)})
  assert train_flops_per_example(model, (40,)) == 3 * 2 * (40 * 100 + 100 * 100 + 100 * 10)


def test_mnist1d_cnn_matches_a_hand_count_of_its_convolutions():
  # lengths 40 -> 19 -> 10 -> 5; multiply-adds per position = kernel x in-channels x out
  macs = 19 * 5 * 1 * 25 + 10 * 3 * 25 * 25 + 5 * 3 * 25 * 25 + 125 * 10
  assert train_flops_per_example(models.build_model('cnn1d', num_classes=10), (40,)) == 6 * macs


@pytest.mark.parametrize('tied', [False, True])
def test_transformer_matches_the_palm_formula(tied):
  """6 N T + 12 L d T^2 per sequence of T tokens (Chowdhury et al. 2022, app. B), N the
  matmul weights: 4 d^2 (qkv, out) + 8 d^2 (4x MLP) per layer, and the d x V output layer."""
  layers, width, length, vocab = 2, 64, 32, 50
  model = models.build_model('transformer', num_classes=vocab, options={
      'num_layers': layers, 'width': width, 'num_heads': 4, 'max_len': length,
      'tie_embeddings': tied})
  weights = layers * 12 * width * width + width * vocab
  expected = 6 * weights * length + 12 * layers * width * length ** 2
  assert train_flops_per_example(model, (length,), input_dtype=jnp.int32) == expected


def test_cifar_resnet18_is_the_published_0_56_gmacs():
  flops = train_flops_per_example(models.build_model('resnet18', num_classes=10), (32, 32, 3))
  assert flops / 6 == pytest.approx(0.556e9, rel=0.01)
