"""SIGKILL at random moments, restart, same result as an uninterrupted run.

All opt-in (`-m faults`): a short fine-tuning run killed three times (once
during an asynchronous checkpoint save), and the full harness, which kills a
GHN training run and a fine-tuning run at least ten times each. The default
run checks bit-identical resume without kills (tests/test_finetune.py).
"""

import os

import pytest

import fault_harness as fh
from configs_for_tests import TINY_VIT
from logah_jax import checkpoint


def _finetune_argv(workdir, steps):
  return fh.command(
      'configs/finetune.py:smoke', workdir, f'--config.arch={TINY_VIT}',
      '--config.data.batch_size=8', f'--config.train.num_steps={steps}',
      '--config.eval.every_steps=5', '--config.eval.batch_size=50',
      '--config.checkpoint.every_steps=3', '--config.checkpoint.keep=2',
      '--config.checkpoint.async_save=True', '--config.log_every_steps=1')


def _ghn_argv(workdir, steps):
  return fh.command(
      'configs/default.py:smoke', workdir, f'--config.train.num_steps={steps}',
      '--config.holdout.enabled=False', '--config.demo.enabled=False',
      '--config.train.pool_size=4', '--config.data.batch_size=8',
      '--config.checkpoint.every_steps=3', '--config.checkpoint.keep=2',
      '--config.checkpoint.async_save=True', '--config.log_every_steps=1')


def _killed_vs_reference(tmp_path, argv_of, steps, kills, seed):
  environ = fh.env(str(tmp_path / 'xla'))
  log = str(tmp_path / 'log.txt')
  ref, killed = str(tmp_path / 'reference'), str(tmp_path / 'killed')
  timing = fh.run_once(argv_of(ref, steps), environ, log, ref)
  attempts = fh.run_with_kills(argv_of(killed, steps), environ, killed,
                               kills=kills, seed=seed, timing=timing,
                               total_steps=steps, log_path=log)
  print(f"\n{os.path.basename(killed)}: {fh.summary(attempts)}; {timing}")
  assert sum(a.killed for a in attempts) == kills, fh.summary(attempts)
  assert any(a.during_save for a in attempts), fh.summary(attempts)
  assert fh.compare_logs(ref, killed, 'metrics.jsonl') == steps
  return ref, killed, attempts


def _assert_same_finetune(ref, killed, steps):
  assert fh.compare_logs(ref, killed, 'eval.jsonl') == 1 + steps // 5 + (
      steps % 5 > 0)
  fh.assert_trees_equal(
      checkpoint.restore_params(os.path.join(ref, 'final_params')),
      checkpoint.restore_params(os.path.join(killed, 'final_params')))


def _assert_same_ghn(ref, killed, steps):
  def params(workdir):
    with checkpoint.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                      async_save=False) as mngr:
      state, _ = mngr.restore(steps)
    return state['params']
  fh.assert_trees_equal(params(ref), params(killed))


@pytest.mark.faults  # the default run keeps test_finetune's resume equality
def test_finetune_killed_three_times(tmp_path):
  steps = 30
  ref, killed, _ = _killed_vs_reference(tmp_path, _finetune_argv, steps,
                                        kills=3, seed=0)
  _assert_same_finetune(ref, killed, steps)


@pytest.mark.faults
def test_finetune_killed_twelve_times(tmp_path):
  steps = 60
  ref, killed, _ = _killed_vs_reference(tmp_path, _finetune_argv, steps,
                                        kills=12, seed=1)
  _assert_same_finetune(ref, killed, steps)


@pytest.mark.faults
def test_ghn_training_killed_twelve_times(tmp_path):
  steps = 45
  ref, killed, _ = _killed_vs_reference(tmp_path, _ghn_argv, steps,
                                        kills=12, seed=2)
  _assert_same_ghn(ref, killed, steps)
