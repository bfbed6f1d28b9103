"""A linear model without bias, started at zero: the noisy quadratic model's parameters."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Linear(nn.Module):
  """Flatten, then xᵀθ with θ of shape (features, outputs), initialised to zeros and no bias.

  With `data.name='nqm'` and the regression task, training starts at δ_0 = θ_0 − θ* = −θ*
  exactly, as `mbx.measure.nqm` assumes (the MLP with hidden=() has a bias and a random
  initial kernel). `outputs` rather than num_classes: regression data declare no classes.
  """

  outputs: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.outputs, use_bias=False, kernel_init=nn.initializers.zeros,
                 dtype=self.dtype, param_dtype=jnp.float32)(x)
    return x.astype(jnp.float32)
