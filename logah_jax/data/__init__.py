"""Datasets, tokenizers and batching for logah_jax (numpy on host, no TF).

  src = get_dataset('fashion_mnist', 'train')            # after setup_data.sh
  for batch in Loader(src, 128, seed=0, augment=True): ...
  tok = get_tokenizer('gpt2')                           # offline GPT-2 BPE

Modules: setup (fetch + prepare), builders (raw readers, splits; tfds only
when preparing or reading), tfds_builders, tokenizer, text
(token streams), images (image sources), sources (specs, source classes),
augment, loader, storage (paths, cache), datasets (get_dataset).
"""

from logah_jax.data.builders import SHAKESPEARE_TEST
from logah_jax.data.builders import SHAKESPEARE_VALIDATION
from logah_jax.data.datasets import check_split
from logah_jax.data.datasets import describe
from logah_jax.data.datasets import get_dataset
from logah_jax.data.datasets import split_names
from logah_jax.data.loader import Loader
from logah_jax.data.sources import DATASETS
from logah_jax.data.sources import SourceInfo
from logah_jax.data.storage import default_data_dir
from logah_jax.data.tokenizer import ByteTokenizer
from logah_jax.data.tokenizer import get_tokenizer
from logah_jax.data.tokenizer import gpt2_tokenizer

__all__ = [
    'ByteTokenizer', 'DATASETS', 'Loader', 'SHAKESPEARE_TEST',
    'SHAKESPEARE_VALIDATION', 'SourceInfo', 'check_split', 'default_data_dir',
    'describe', 'get_dataset', 'get_tokenizer', 'gpt2_tokenizer',
    'split_names',
]
