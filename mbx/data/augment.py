"""Training-time augmentation as pure JAX functions, run on device per example.

Each function maps (key, x) -> x for a batch of preprocessed NHWC images,
keeps the shape and dtype, and is meant to be called inside the jitted train
step. The same key gives the same output.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mbx.data import catalog

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
  """Pads each image with `padding` zeros per side, takes a random crop back.

  The images are already normalised, so the zero padding is the dataset mean
  colour in pixel space (torchvision pads the raw image with black instead).
  """
  n, h, w, c = x.shape
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop = lambda img, off: jax.lax.dynamic_slice(
      img, (off[0], off[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def cifar_augment(key: jax.Array, x: jax.Array) -> jax.Array:
  """Random 32x32 crop with 4-pixel padding, then random horizontal flip.

  The standard CIFAR augmentation (He et al. 2016, "Deep residual learning").
  """
  crop_key, flip_key = jax.random.split(key)
  return random_flip(flip_key, random_crop(crop_key, x, padding=4))


def random_resized_crop(
    key: jax.Array,
    x: jax.Array,
    area: tuple[float, float] = (0.08, 1.0),
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
  """Inception-style crop (Szegedy et al. 2015), resized back to the input size.

  Per example: a box with area fraction ~ U(area) and log aspect ratio (w/h)
  ~ U(log aspect_ratio), clipped to the image (torchvision resamples instead),
  at a uniform position, resized bilinearly to the full size.
  """
  n, h, w, c = x.shape
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  box_area = h * w * jax.random.uniform(
      k_area, (n,), minval=area[0], maxval=area[1])
  ratio = jnp.exp(jax.random.uniform(
      k_ratio, (n,), minval=np.log(aspect_ratio[0]),
      maxval=np.log(aspect_ratio[1])))
  box_h = jnp.clip(jnp.sqrt(box_area / ratio), 1.0, h)
  box_w = jnp.clip(jnp.sqrt(box_area * ratio), 1.0, w)
  top = jax.random.uniform(k_y, (n,)) * (h - box_h)
  left = jax.random.uniform(k_x, (n,)) * (w - box_w)
  # scale_and_translate maps input coordinate u to output (u * scale + t).
  scale = jnp.stack([h / box_h, w / box_w], axis=-1)
  translation = -jnp.stack([top, left], axis=-1) * scale

  def resize(img, s, t):
    return jax.image.scale_and_translate(
        img, (h, w, c), (0, 1), s, t, method="linear", antialias=True)

  return jax.vmap(resize)(x, scale, translation).astype(x.dtype)


def imagenet_augment(key: jax.Array, x: jax.Array) -> jax.Array:
  """Random-resized crop of the 224 centre crop, then random horizontal flip.

  The host already resized the shorter side to 256 and centre-cropped 224 (a
  fixed shape is needed on device), so the crop is taken from that centre
  region rather than from the whole image as in the usual ResNet recipe.
  """
  crop_key, flip_key = jax.random.split(key)
  return random_flip(flip_key, random_resized_crop(crop_key, x))


_AUGMENT: dict[str, AugmentFn | None] = {
    "mnist1d": None,
    "mnist": None,
    "fashion_mnist": None,
    "cifar10": cifar_augment,
    "cifar100": cifar_augment,
    "imagenet2012": imagenet_augment,
}


def augment_fn(name: str) -> AugmentFn | None:
  """The training augmentation for dataset `name`, or None if it has none."""
  catalog.validate_dataset(name)
  return _AUGMENT[name]
