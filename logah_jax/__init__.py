"""logah_jax: LoGAH graph hypernetworks that predict transformer parameters."""

__version__ = '0.1.0'
