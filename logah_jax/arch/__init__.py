"""Target architectures: configs, spaces, named models, counts and graphs."""

from logah_jax.arch.configs import ArchConfig, FAMILIES, GPT2Config, ViTConfig
from logah_jax.arch.configs import from_dict, to_dict
from logah_jax.arch.counts import num_params
from logah_jax.arch.named import named, names, parse, to_spec
from logah_jax.arch.spaces import SPACES, Space, VIT_HEADS_RULE, make_space, sample
from logah_jax.arch.graph import ArchGraph, Node, Slot, OP_TYPES, OP_INDEX, to_graph
from logah_jax.arch.batching import DenseGraphBatch, NODE_BUCKETS, batch_graphs, bucket_size
