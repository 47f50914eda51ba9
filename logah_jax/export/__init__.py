"""Exporters of target inits to other frameworks' formats.

Import the one you need (`from logah_jax.export import hf_gpt2`); nothing is
imported here, so that `python -m logah_jax.export.hf_gpt2` runs cleanly.
"""
