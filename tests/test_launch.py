"""The launch scripts' argument handling, with stand-ins for the remote tools
(no TPU, no network): what the workers would run, argument by argument."""

import os
import subprocess

import pytest

from configs_for_tests import ROOT

_STUB = '#!/bin/sh\nfor a in "$@"; do echo "$(basename "$0") arg: $a"; done\n'
# `gcloud ... --command=C` runs C in a local shell, as a worker would.
_GCLOUD = ('#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in '
           '--command=*) cmd=${a#--command=};; esac; done\nbash -c "$cmd"\n')


def _tpu_pod(tmp_path, *args, data_dir=''):
  repo, bin_dir = tmp_path / 'repo', tmp_path / 'bin'
  (repo / '.venv' / 'bin').mkdir(parents=True)
  bin_dir.mkdir()
  for path, text in ((repo / '.venv' / 'bin' / 'python', _STUB),
                     (repo / '.venv' / 'bin' / 'pip', _STUB),
                     (bin_dir / 'gcloud', _GCLOUD)):
    path.write_text(text)
    path.chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
             TPU_NAME='v4-32', ZONE='z', REPO=str(repo),
             LOGAH_DATA_DIR=data_dir)
  run = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'tpu_pod.sh'),
                        *args], capture_output=True, text=True, env=env,
                       timeout=60, check=False)
  assert run.returncode == 0, run.stderr
  return [line.split(' arg: ', 1)[1] for line in run.stdout.splitlines()
          if line.startswith('python arg: ')]


@pytest.mark.parametrize('overrides', [
    [],  # once an empty '' argument, which main refuses
    ['--config.train.m=8', "--config.holdout.split=it's a test"],
])
def test_tpu_pod_passes_each_argument_through_unchanged(tmp_path, overrides):
  argv = _tpu_pod(tmp_path, 'configs/paper_vits.py:m=8', 'gs://b/runs/a b',
                  *overrides)
  assert argv == ['-m', 'logah_jax.main', '--config=configs/paper_vits.py:m=8',
                  '--workdir=gs://b/runs/a b', *overrides]


@pytest.mark.parametrize('script', ['local.sh', 'gpu_multinode.sh'])
def test_relative_paths_are_the_callers(tmp_path, script):
  """The scripts move to the repository before running: a workdir, data
  directory or config file given relative to the caller once landed inside
  the repository."""
  repo, caller = tmp_path / 'repo', tmp_path / 'caller'
  (repo / 'launch').mkdir(parents=True)
  (repo / '.venv' / 'bin').mkdir(parents=True)
  (caller / 'mine').mkdir(parents=True)
  (caller / 'mine' / 'exp.py').write_text('')
  text = open(os.path.join(ROOT, 'launch', script)).read()
  (repo / 'launch' / script).write_text(text)
  (repo / 'launch' / 'setup.sh').write_text('')
  python = repo / '.venv' / 'bin' / 'python'
  python.write_text('#!/bin/sh\necho "data_dir: $LOGAH_DATA_DIR"\n'
                    + _STUB.split('\n', 1)[1])
  python.chmod(0o755)

  def argv(config):
    run = subprocess.run(
        ['bash', str(repo / 'launch' / script), config, 'runs/a', '--x=1'],
        cwd=caller, capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, LOGAH_DATA_DIR='data'))
    assert run.returncode == 0, run.stderr
    data_dir, *args = run.stdout.splitlines()
    return [line.split(' arg: ', 1)[1] for line in args] + [data_dir]

  assert argv('mine/exp.py:smoke') == [
      '-m', 'logah_jax.main', f'--config={caller}/mine/exp.py:smoke',
      f'--workdir={caller}/runs/a', '--x=1', f'data_dir: {caller}/data']
  # not a file of the caller's: the repository's own config
  assert argv('configs/default.py')[2] == '--config=configs/default.py'
