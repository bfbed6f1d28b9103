"""Host-side preprocessing of decoded tfds examples into float32 model inputs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mbx.data import catalog


def normalize_images(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
  """uint8 NHWC -> float32 (x / 255 - mean) / std, per channel."""
  x = images.astype(np.float32) / np.float32(255.0)
  x -= np.asarray(mean, np.float32)
  x /= np.asarray(std, np.float32)
  return x


def resize_and_center_crop(
    image: np.ndarray,
    resize: int = catalog.IMAGENET_RESIZE,
    crop: int = catalog.IMAGENET_CROP,
) -> np.ndarray:
  """Resize the shorter side to `resize` (bilinear, antialiased), centre-crop.

  The standard ResNet evaluation transform (torchvision Resize(256) +
  CenterCrop(224)); mbx uses it for every ImageNet split so examples have one
  fixed shape, and does the training-time cropping on device.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  h, w = image.shape[:2]
  scale = resize / min(h, w)
  new_h, new_w = max(crop, round(h * scale)), max(crop, round(w * scale))
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  pil = Image.fromarray(image).convert("RGB")
  if (new_h, new_w) != (h, w):
    pil = pil.resize((new_w, new_h), Image.BILINEAR)
  top = int(round((new_h - crop) / 2.0))
  left = int(round((new_w - crop) / 2.0))
  return np.asarray(pil.crop((left, top, left + crop, top + crop)))


def inputs(name: str, raw: Sequence[np.ndarray]) -> np.ndarray:
  """Decoded examples of dataset `name` -> float32 batch of its input_shape."""
  spec = catalog.spec(name)
  if name == "mnist1d":
    # Raw make_dataset values (see catalog); NWC with one channel.
    return np.stack(raw).astype(np.float32)[..., None]
  if name == "imagenet2012":
    raw = [resize_and_center_crop(image) for image in raw]
  return normalize_images(np.stack(raw), spec.mean, spec.std)


def labels(raw: Sequence[int]) -> np.ndarray:
  return np.asarray(raw, dtype=np.int32)
