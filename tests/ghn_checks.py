"""Checks of a predicted parameter tree shared by the GHN tests."""

import jax
import jax.numpy as jnp

from logah_jax import models


def assert_same_structure(pred, cfg):
  """`pred` has the tree, shapes and dtypes of `cfg`'s params."""
  abstract = models.abstract_params(cfg)
  assert jax.tree.structure(pred) == jax.tree.structure(abstract)
  for got, want in zip(jax.tree.leaves(pred), jax.tree.leaves(abstract)):
    assert got.shape == want.shape and got.dtype == want.dtype


def finite_forward(cfg, params):
  """`cfg` applied with `params` to a dummy input gives finite outputs."""
  x = models.dummy_input(cfg, batch=2)
  if cfg.family == 'vit':
    x = jax.random.normal(jax.random.key(0), x.shape)
  out = models.build(cfg).apply({'params': params}, x)
  assert bool(jnp.isfinite(out).all())
