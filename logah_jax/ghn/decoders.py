"""Parameter decoders: LoGAH's low-rank one and GHN-3's full-rank one.

Both map node embeddings [n, D] to matrices [n, rows, cols] for a requested
(rows, cols); the write-back module turns those into target tensors. Decoders
run in float32 whatever the Graphormer's dtype (docs/algorithm.md §3).

Low-rank (docs/algorithm.md §4.2): an MLP gives [n, 2r, r]; a last linear
layer M4 (r -> K) gives Y [n, 2r, K] from which factors A [K, r] and B [r, K]
are read, and W = A[:rows] @ B[:, :cols]. The 'paper' factorisation reads A
and B from Y by a row-major reinterpretation (the paper's code); 'transpose'
takes A = Y[:r]^T, B = Y[r:]. Only the parts of Y that the requested rows and
columns depend on are computed, never the full n x 2r x K tensor.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from logah_jax.ghn import graphormer
from logah_jax.ghn.graphormer import TorchDense, torch_linear_init


class SliceableDense(nn.Module):
  """A linear layer whose output columns can be computed in part."""

  features: int

  @nn.compact
  def __call__(self, x, cols: int | None = None):
    init = torch_linear_init(x.shape[-1])
    kernel = self.param('kernel', init, (x.shape[-1], self.features))
    bias = self.param('bias', init, (self.features,))
    cols = self.features if cols is None else cols
    return graphormer.matmul_rows(x, kernel[:, :cols]) + bias[:cols]


class LowRankDecoder(nn.Module):
  """LoGAH's ConvDecoder3LoRA: W = A @ B with rank-r factors."""

  hid: int
  rank: int
  max_ck: int
  factorization: str = 'paper'

  def setup(self):
    r = self.rank
    self.m1 = TorchDense(4 * self.hid)
    self.m2 = TorchDense(8 * self.hid)
    self.m3 = TorchDense(2 * r * r)
    self.m4 = SliceableDense(self.max_ck)

  def hidden(self, x):
    """[n, D] -> [n, 2r, r], the input of M4."""
    h = self.m3(jax.nn.relu(self.m2(jax.nn.relu(self.m1(x)))))
    return h.reshape(x.shape[0], 2 * self.rank, self.rank)

  def _paper_rows(self, h, start: int, size: int):
    """`size` rows of the row-major view of Y[:, start:], each r wide."""
    r, k = self.rank, self.max_ck
    n_rows = -(-size * r // k)  # rows of Y that hold size * r values
    y = self.m4(jax.nn.relu(h[:, start:start + n_rows]))  # [n, n_rows, K]
    return y.reshape(h.shape[0], -1)[:, :size * r].reshape(-1, size, r)

  def leading_rows(self, h, cols: int | None = None):
    """[n, 2, cols]: rows 0 and r of Y, all that the 'paper' factors of a
    request read when it has at most K / r rows and columns
    (`reads_leading_rows`), cut to their first `cols` (default K) columns.
    Decoding many request groups, computing these once for all their nodes
    makes one product (and one gradient) instead of two per group."""
    r = self.rank
    return self.m4(jax.nn.relu(h[:, 0:2 * r:r]), cols)

  def reads_leading_rows(self, rows: int, cols: int) -> bool:
    return (self.factorization == 'paper' and rows * self.rank <= self.max_ck
            and cols * self.rank <= self.max_ck)

  def factors(self, h, rows: int, cols: int, leading=None):
    """A [n, rows, r] and B [n, r, cols] from hidden h [n, 2r, r].

    `leading`: the nodes' `leading_rows` (then `h` is not read), or None to
    compute what is read from `h`.
    """
    r = self.rank
    if rows > self.max_ck or cols > self.max_ck:
      raise ValueError(f'the low-rank decoder can emit at most max_ck='
                       f'{self.max_ck} rows/columns; {rows}x{cols} was '
                       'requested.')
    if leading is not None and self.reads_leading_rows(rows, cols):
      a = leading[:, 0, :rows * r].reshape(-1, rows, r)
      b = jnp.swapaxes(leading[:, 1, :cols * r].reshape(-1, cols, r), 1, 2)
    elif self.factorization == 'paper':
      a = self._paper_rows(h, 0, rows)
      b = jnp.swapaxes(self._paper_rows(h, r, cols), 1, 2)
    else:
      a = jnp.swapaxes(self.m4(jax.nn.relu(h[:, :r]), rows), 1, 2)
      b = self.m4(jax.nn.relu(h[:, r:]), cols)
    return a, b

  def __call__(self, x, rows: int, cols: int):
    a, b = self.factors(self.hidden(x), rows, cols)
    return a @ b


def _init_small(scale: float = 0.2):
  """GHN-3's `_init_small`: the PyTorch default divided by 5."""
  def init(key, shape, dtype=jnp.float32):
    bound = scale / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class FullRankDecoder(nn.Module):
  """GHN-3's ConvDecoder3 with its 1-D decoder and class predictors.

  A node becomes a [D, D, 16, 16] block: Linear(D -> 4D x 16 x 16) + ReLU, then
  per pixel Linear(4D -> 8D) + ReLU + Linear(8D -> D x D). Larger tensors are
  tiled by the write-back. Only the pixels a kernel needs are computed.
  """

  hid: int
  spatial: int = 16
  num_classes: int = 10

  def setup(self):
    d, s = self.hid, self.spatial
    init = torch_linear_init(d)
    self.fc_kernel = self.param('fc_kernel', init, (d, 4 * d * s * s))
    self.fc_bias = self.param('fc_bias', init, (4 * d * s * s,))
    self.conv1 = TorchDense(8 * d)
    self.conv2 = nn.Dense(d * d, kernel_init=_init_small(),
                          bias_init=nn.initializers.zeros)
    self.class_predictor = nn.Dense(self.num_classes,
                                    kernel_init=_init_small(),
                                    bias_init=nn.initializers.zeros)
    self.fc1_1d = TorchDense(2 * d)
    self.fc2_1d = nn.Dense(2 * d, kernel_init=_init_small(),
                           bias_init=nn.initializers.zeros)
    self.bias_class = TorchDense(self.num_classes)

  def conv(self, x, kh: int, kw: int):
    """[n, D] -> [n, D (c_out), D (c_in), kh', kw'] with kh' = min(kh, 16)."""
    n, d, s = x.shape[0], self.hid, self.spatial
    kh, kw = min(kh, s), min(kw, s)
    rows = jnp.arange(s // 2 - kh // 2, s // 2 + (kh + 1) // 2)
    cols = jnp.arange(s // 2 - kw // 2, s // 2 + (kw + 1) // 2)
    # The first layer's output is laid out (4D, s, s): take only the pixels
    # of the centre crop, as columns of the full kernel.
    pix = (rows[:, None] * s + cols[None, :]).reshape(-1)
    chan = jnp.arange(4 * d)[:, None] * s * s + pix[None, :]  # [4D, kh*kw]
    h = jax.nn.relu(jnp.einsum('nd,dcp->npc', x, self.fc_kernel[:, chan]) +
                    self.fc_bias[chan].T[None])  # [n, kh*kw, 4D]
    w = self.conv2(jax.nn.relu(self.conv1(h)))  # [n, kh*kw, D*D]
    w = w.reshape(n, kh, kw, d, d)
    return jnp.transpose(w, (0, 3, 4, 1, 2))

  def classifier(self, x):
    """[n, num_classes, D]: centre pixel -> ReLU -> Linear over c_out."""
    w = self.conv(x, 1, 1)[..., 0, 0]  # [n, c_out, c_in]
    w = self.class_predictor(jnp.swapaxes(jax.nn.relu(w), 1, 2))
    return jnp.swapaxes(w, 1, 2)

  def vector(self, x):
    """1-D decoder: [n, 2, D], row 0 weights (norms), row 1 biases."""
    w = self.fc2_1d(jax.nn.relu(self.fc1_1d(x)))
    return w.reshape(x.shape[0], 2, self.hid)

  def classifier_bias(self, x):
    """[n, 2, num_classes] for a classifier's bias (row 1 is used)."""
    return self.bias_class(jax.nn.relu(self.vector(x)))

  def __call__(self, x):
    return (self.conv(x, 1, 1), self.classifier(x), self.classifier_bias(x))
