"""Graph hypernetworks: LoGAH (low-rank decoder) and GHN-3 (full-rank)."""

from logah_jax.ghn.api import GHNInputs, decode, family_of, init, make_inputs
from logah_jax.ghn.api import body_function, check_archs, decode_function
from logah_jax.ghn.api import node_embeddings, num_nodes, num_params, predict
from logah_jax.ghn.api import trace_counts
from logah_jax.ghn.load import TrainedGHN, load, trained_width
from logah_jax.ghn.config import FILLS, PREDICTION_FIELDS, GHNConfig, from_dict
from logah_jax.ghn.config import names, named, to_dict
from logah_jax.ghn.plan import tiled_periods
from logah_jax.ghn.plan import vocab_period
