"""The training loop's order of work, with a fake step (no compilation):
the host fetches a step's metrics only once the next step is queued, except
at steps that log, save or evaluate, and a non-finite step is never saved."""

import numpy as np
import pytest

from logah_jax.train import loop


class _Manager:
  def __init__(self, events):
    self.events, self.saved = events, []

  def latest_step(self):
    return self.saved[-1] if self.saved else None

  def save(self, step, state, *, extra, force):
    del force
    self.events.append(('save', step))
    assert extra['step'] == step == state and extra['loader'] == step
    self.saved.append(step)
    self.extras = getattr(self, 'extras', {})
    self.extras[step] = extra
    return True

  def wait_until_finished(self):
    pass


class _Loader:
  def __init__(self):
    self.position = 0

  def state(self):
    return self.position


def _run(tmp_path, monkeypatch, *, steps=8, bad_step=None, log_every=4,
         save_every=4, hook_at=lambda done: False):
  events, loader = [], _Loader()

  def step(state, index):
    events.append(('dispatch', index))
    loader.position += 1
    finite = index != bad_step
    return state + int(finite), {'loss': np.float32(1.0 if finite else np.nan),
                                 'grad_norm': np.float32(0.5),
                                 'finite': np.bool_(finite),
                                 'index': np.float32(index)}

  real = loop.host_metrics

  def fetch(device_metrics):
    events.append(('fetch', int(device_metrics['index'])))
    return real(device_metrics)

  monkeypatch.setattr(loop, 'host_metrics', fetch)
  task = loop.Task(
      name='fake training', step=step, schedule=lambda s: 0.1,
      num_steps=steps, log_every=log_every, save_every=save_every,
      units_per_step=1, rate_key='steps_per_s', curves=('loss',),
      title='fake', hook=lambda done, state, bar: events.append(('hook', done)),
      hook_at=hook_at)
  mngr = _Manager(events)
  try:
    _, last = loop.run_steps(task, 0, start=0, end=steps, loader=loader,
                             mngr=mngr, workdir=str(tmp_path),
                             clock=loop.Clock())
  except loop.NonFiniteLossError as e:
    return events, mngr, e
  return events, mngr, last


def test_metrics_are_fetched_after_the_next_step_is_queued(tmp_path,
                                                           monkeypatch):
  events, mngr, last = _run(tmp_path, monkeypatch, hook_at=lambda d: d == 6)
  order = {event: i for i, event in enumerate(events)}
  sync = {3, 5, 7}  # indices of steps 4 (log, save), 6 (hook), 8 (end)
  for index in range(8):
    if index in sync:  # settled before anything reads it
      assert order[('fetch', index)] < order.get(('dispatch', index + 1), 1e9)
    else:  # fetched only once the next step was dispatched
      assert order[('dispatch', index + 1)] < order[('fetch', index)]
    assert [e for e in events if e == ('fetch', index)] == [('fetch', index)]
  assert mngr.saved == [4, 8]
  assert order[('fetch', 5)] < order[('hook', 6)] < order[('dispatch', 6)]
  assert last['step'] == 8 and last['loss'] == 1.0


def test_a_non_finite_step_stops_the_run_one_step_late_at_most(tmp_path,
                                                               monkeypatch):
  events, mngr, error = _run(tmp_path, monkeypatch, bad_step=4)  # step 5
  assert isinstance(error, loop.NonFiniteLossError)
  assert 'fake training step 5: loss nan' in str(error) and error.step == 5
  assert 'last good checkpoint (step 4)' in str(error)
  assert mngr.saved == [4]  # nothing saved after the bad step
  assert events[-2:] == [('dispatch', 5), ('fetch', 4)]
  # a bad step that would be saved is settled before the save
  events, mngr, error = _run(tmp_path, monkeypatch, bad_step=3)  # step 4
  assert 'fake training step 4: loss nan' in str(error)
  assert str(error).endswith('No checkpoint had been written yet.')
  assert mngr.saved == [] and events[-1] == ('fetch', 3)


@pytest.mark.parametrize('at', [3, 4])
def test_a_signal_inside_the_loop_stops_it_at_the_next_step_boundary(
    tmp_path, at):
  """orbax swallows a KeyboardInterrupt raised while it waits for a save, so
  a signal during the steps is noted and acted on between two steps, after a
  checkpoint of the steps since the last one (step 3: one of its own, with
  the open row's losses; step 4 already has its periodic one)."""
  def hook(done, state, bar):
    loop.interrupt('SIGTERM')  # as the handler would, mid-step
    events.append(('hook finished', done))  # the work in hand completes

  events, loader = [], _Loader()

  def step(state, index):
    events.append(('dispatch', index))
    loader.position += 1
    return state + 1, {'loss': np.float32(index), 'grad_norm': np.float32(0.5),
                       'finite': np.bool_(True)}

  task = loop.Task(
      name='fake training', step=step, schedule=lambda s: 0.1, num_steps=8,
      log_every=4, save_every=4, units_per_step=1, rate_key='steps_per_s',
      curves=('loss',), title='fake', hook=hook, hook_at=lambda d: d == at)
  mngr = _Manager(events)
  try:
    loop.run_steps(task, 0, start=0, end=8, loader=loader, mngr=mngr,
                   workdir=str(tmp_path), clock=loop.Clock())
  except loop.Interrupted as e:
    assert str(e) == 'SIGTERM'
  else:
    raise AssertionError('the run was not interrupted')
  # the step in hand completes, and is saved; the next one never starts
  assert events == [('dispatch', i) for i in range(at)] + [
      ('hook finished', at), ('save', at)]
  assert mngr.saved == [at]
  window = mngr.extras[at].get(loop.WINDOW_KEY, [])
  assert [w['loss'] for w in window] == ([0.0, 1.0, 2.0] if at == 3 else [])
  try:  # outside the loop a signal acts at once
    loop.interrupt('SIGINT')
  except loop.Interrupted as e:
    assert str(e) == 'SIGINT'
  else:
    raise AssertionError('not raised outside the loop')


class _Killed(Exception):
  pass


def _fake_task(losses, *, steps, kill_at=None):
  def step(state, index):
    if index == kill_at:
      raise _Killed
    return state + 1, {'loss': np.float32(losses[index]),
                       'grad_norm': np.float32(0.5), 'finite': np.bool_(True)}
  return loop.Task(name='fake training', step=step, schedule=lambda s: 0.1,
                   num_steps=steps, log_every=2, save_every=3,
                   units_per_step=1, rate_key='steps_per_s',
                   curves=('loss',), title='fake')


def _losses_by_step(workdir):
  return [(r['step'], r['loss']) for r in loop.report.read_metrics(
      str(workdir / loop.report.METRICS_FILE))]


def test_a_resumed_run_logs_the_rows_of_an_uninterrupted_one(tmp_path):
  """Killed after its checkpoint at step 3 (off the log interval of 2) and
  resumed there, a run logs every step's loss in the same rows as a run
  never stopped: step 3's loss is neither lost nor counted twice."""
  losses = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]

  def run(workdir, start, state, kill_at=None):
    mngr = _Manager([])
    loader = _Loader()
    loader.position = start
    task = _fake_task(losses, steps=6, kill_at=kill_at)
    original = task.step

    def step(state, index):  # the loader advances once per step, as real ones
      loader.position += 1
      return original(state, index)
    task.step = step
    return loop.run_steps(task, state, start=start, end=6, loader=loader,
                          mngr=mngr, workdir=str(workdir), clock=loop.Clock())

  whole = tmp_path / 'whole'
  whole.mkdir()
  run(whole, 0, 0)
  resumed = tmp_path / 'resumed'
  resumed.mkdir()
  try:
    run(resumed, 0, 0, kill_at=4)  # steps 1-4 ran; the checkpoint is step 3
  except _Killed:
    pass
  run(resumed, 3, 3)
  want = [(2, 1.5), (3, 4.0), (4, 8.0), (6, 24.0)]  # means over each row
  assert _losses_by_step(whole) == want
  assert _losses_by_step(resumed) == want


def test_a_run_stopped_between_rows_keeps_the_open_row_for_its_resumption(
    tmp_path):
  """Stopped at step 5 (off the log interval of 2 and the checkpoint interval
  of 3, as `stop_after_steps` does), a run writes no row for step 5 but saves
  its loss with the checkpoint; resumed from it, the run logs the rows of one
  never stopped."""
  losses = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]

  def run(workdir, start, end, window=()):
    mngr, loader = _Manager([]), _Loader()
    loader.position = start
    task = _fake_task(losses, steps=6)
    original = task.step

    def step(state, index):
      loader.position += 1
      return original(state, index)
    task.step = step
    loop.run_steps(task, start, start=start, end=end, loader=loader,
                   mngr=mngr, workdir=str(workdir), clock=loop.Clock(),
                   window=window)
    return mngr

  want = [(2, 1.5), (3, 4.0), (4, 8.0), (6, 24.0)]
  mngr = run(tmp_path, 0, 5)
  assert mngr.saved == [3, 5]
  assert _losses_by_step(tmp_path) == want[:3]  # no row for step 5
  window = mngr.extras[5][loop.WINDOW_KEY]
  assert [w['loss'] for w in window] == [16.0]
  assert loop.WINDOW_KEY not in mngr.extras[3]  # a periodic one closes a row
  run(tmp_path, 5, 6, window)
  assert _losses_by_step(tmp_path) == want


def test_the_logged_learning_rate_is_one_compiled_program(tmp_path):
  """Each metrics row logs the schedule's learning rate; the schedule runs as
  one jitted program, not as one compiled program per eager operation."""
  import optax  # pylint: disable=g-import-not-at-top
  from logah_jax import compiles  # pylint: disable=g-import-not-at-top
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 8, 0.1)
  task = _fake_task([1.0] * 8, steps=8)
  task.schedule = schedule
  loader = _Loader()
  original = task.step

  def step(state, index):
    loader.position += 1
    return original(state, index)
  task.step = step
  before = compiles.snapshot()
  loop.run_steps(task, 0, start=0, end=8, loader=loader, mngr=_Manager([]),
                 workdir=str(tmp_path), clock=loop.Clock())
  assert (compiles.snapshot() - before).count == 1
  rows = loop.report.read_metrics(str(tmp_path / loop.report.METRICS_FILE))
  assert [r['step'] for r in rows] == [2, 3, 4, 6, 8]
  for r in rows:
    assert r['lr'] == pytest.approx(float(schedule(r['step'] - 1)), rel=1e-6)
