"""Tables and plots of a comparison (pure functions of the eval rows).

Splits: the eval rows (step 0, the curves, the final metric and the steps to
the target) come from the validation split, so nothing chosen from them has
seen the test split; the test split is read once per run, after the last
step (`finetuning.py`), and only reported: the test columns.

Spreads: "mean ± std" is over seeds with the sample std (ddof=1); with one
seed the std is undefined, stored as None and printed '–'.

"Steps to reach RandInit's final metric": the target is the mean over seeds
of RandInit's (validation) metric at the end of the budget; for each seed of
a method, the steps to the target are the first evaluated step whose metric
is at least as good, and a seed that never gets there counts as over budget
(infinity). The column gives the MEDIAN over ALL seeds, so it reads "not
reached" when half the seeds or more never reach the target (with 3 seeds: 2
or 3 of them), beside how many seeds reached it; × budget is that median
divided by the budget (RandInit itself needs about the whole budget by
definition). The resolution is the evaluation interval.

Equal compute: steps hide the work done before step 0, so a comparison may
pass `costs` (`flops.py` computes them): each method's upfront FLOPs (GHN
training, source pretraining; zero for RandInit) and the FLOPs of one
fine-tuning step. The summary then adds the fine-tuning FLOPs to reach the
target (steps to target x step FLOPs) and the total (upfront + those),
medians over all seeds as the steps are (a seed over budget is not reached);
the upfront cost is paid once and shared by every target it serves, which
the table says under it.

Diverged runs (a non-finite training loss stopped them): such a seed keeps
its evaluations up to then, has no final metric (the final columns are over
the seeds that finished, and say how many did) and counts as over budget
unless it reached the target before it diverged. RandInit's target needs a
final metric from every one of its seeds.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from logah_jax import files
from logah_jax.validation import ConfigError

METRICS = {  # family -> (eval row key, label, higher is better)
    'vit': ('eval_accuracy', 'accuracy', True),
    'gpt2': ('eval_perplexity', 'perplexity', False),
}


def _stats(values) -> dict:
  """Mean and sample std (ddof=1) of the values present; the std is None
  (undefined) with fewer than two, both are None with none."""
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None}
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return {'mean': float(np.mean(values)), 'std': std}


def median_over_seeds(values) -> float | None:
  """The median over ALL seeds of per-seed steps (or FLOPs) to the target,
  a seed that never reaches it (None) counting as over budget (infinity);
  None when that median is over budget, or there are no seeds."""
  if not values:
    return None
  median = float(np.median([math.inf if v is None else float(v)
                            for v in values]))
  return None if math.isinf(median) else median


def _at(rows, step, key):
  for r in rows:
    if r['step'] == step:
      return r[key]
  return None


COST_KEYS = ('upfront_flops', 'upfront', 'step_flops')


def _check_costs(costs: dict, methods) -> dict:
  """{method: cost entry} for every method of the curves; ConfigError else."""
  out = {}
  for method in methods:
    entry = costs.get(method)
    if not isinstance(entry, dict) or set(COST_KEYS) - set(entry):
      raise ConfigError(f'costs[{method!r}]={entry!r} must be a dict with '
                        f'keys {COST_KEYS}')
    flops = {k: entry[k] for k in ('upfront_flops', 'step_flops')}
    for k, v in flops.items():
      if (isinstance(v, bool) or not isinstance(v, numbers.Real)
          or not math.isfinite(v) or v < 0):
        raise ConfigError(f'costs[{method!r}][{k!r}]={v!r} must be a finite '
                          'number >= 0')
    if not isinstance(entry['upfront'], str):
      raise ConfigError(f"costs[{method!r}]['upfront'] must be a string")
    out[method] = {'upfront_flops': float(flops['upfront_flops']),
                   'upfront': entry['upfront'],
                   'step_flops': float(flops['step_flops'])}
  return out


def summarize(curves: dict, *, family: str, num_steps: int,
              baseline: str = 'random', costs: dict | None = None,
              tests: dict | None = None,
              diverged: dict | None = None) -> dict:
  """curves: {method: {seed: [eval rows]}} -> JSON-able summary.

  Args:
    curves: validation eval rows per method and seed.
    family: 'vit' or 'gpt2' (which metric, which direction).
    num_steps: the fine-tuning budget.
    baseline: the method whose final metric is the target.
    costs: optional {method: {'upfront_flops', 'upfront' (what the upfront
      cost is and what shares it), 'step_flops' (one fine-tuning step of
      the target)}} for every method; adds FLOPs to each row.
    tests: optional {method: {seed: test read or None}} (`FinetuneResult.
      test`: 'split', 'loss' and the metric); adds 'test' and 'test_loss'
      (mean ± std over the seeds that have one) to each row.
    diverged: optional {method: {seed: step}} of the runs a non-finite loss
      stopped (`compared_runs.ComparedRuns.diverged`); adds 'diverged'
      ([[seed, step], ...]) to each row.

  Raises:
    ConfigError: `costs` misses a method or has a bad entry.
  """
  checked = None if costs is None else _check_costs(costs, curves)
  key, label, higher = METRICS[family]
  better = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
  out = {'metric': label, 'higher_is_better': higher, 'num_steps': num_steps,
         'baseline': baseline, 'methods_summary': {}}
  finals = {m: [_at(rows, num_steps, key) for rows in seeds.values()]
            for m, seeds in curves.items()}
  target = None
  if baseline in curves and all(v is not None for v in finals[baseline]):
    target = float(np.mean(finals[baseline]))
  out['target_metric'] = target
  for method, seeds in curves.items():
    row = {'step0': _stats([_at(r, 0, key) for r in seeds.values()]),
           'final': _stats(finals[method]),
           'final_loss': _stats([_at(r, num_steps, 'eval_loss')
                                 for r in seeds.values()]),
           'seeds': len(seeds),
           'finished': sum(v is not None for v in finals[method]),
           'diverged': sorted([seed, step] for seed, step in
                              ((diverged or {}).get(method) or {}).items())}
    if target is not None:
      steps = []
      for rows in seeds.values():
        hit = [r['step'] for r in sorted(rows, key=lambda r: r['step'])
               if r.get(key) is not None and better(r[key], target)]
        steps.append(hit[0] if hit else None)
      row['steps_to_target'] = steps  # None: never reached (over budget)
      row['reached'] = sum(s is not None for s in steps)
      median = median_over_seeds(steps)
      row['median_steps_to_target'] = median
      row['fraction_of_budget'] = (None if median is None
                                   else median / num_steps)
    if tests is not None:
      _add_tests(row, label, list((tests.get(method) or {}).values()))
    if checked is not None:
      row.update(checked[method])
      if target is not None:
        _add_flops_to_target(row)
    out['methods_summary'][method] = row
  if tests is not None:
    splits = sorted({t['split'] for seeds in tests.values()
                     for t in (seeds or {}).values() if t})
    out['test_split'] = ', '.join(splits)
  return out


def _add_tests(row: dict, label: str, reads: list) -> None:
  """The test split's one read per seed: mean ± std of metric and loss."""
  reads = [t for t in reads if t]
  row['test'] = _stats([t.get(label) for t in reads])
  row['test_loss'] = _stats([t.get('loss') for t in reads])
  row['test_seeds'] = len(reads)


def _add_flops_to_target(row: dict) -> None:
  """Per-seed fine-tuning and total FLOPs to the target, and their medians
  over all seeds (a seed over budget counts as infinity)."""
  up, step = row['upfront_flops'], row['step_flops']
  finetune = [None if s is None else s * step for s in row['steps_to_target']]
  total = [None if f is None else up + f for f in finetune]
  row['finetune_flops_to_target'] = finetune
  row['median_finetune_flops_to_target'] = median_over_seeds(finetune)
  row['total_flops_to_target'] = total
  row['median_total_flops_to_target'] = median_over_seeds(total)


def _fmt_flops(value) -> str:
  """1.23e12 style; '-' for None, '0' for none at all."""
  if value is None:
    return '-'
  if value == 0:
    return '0'
  mantissa, exponent = f'{value:.2e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def _fmt(value, label) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.2f}%' if label == 'accuracy' else f'{value:.2f}'


def _pm(stats, label) -> str:
  """'mean ± std'; the std of one seed is undefined: '–'."""
  if stats['mean'] is None:
    return '-'
  if stats['std'] is None:
    return f"{_fmt(stats['mean'], label)} ± –"
  std = stats['std'] * (100 if label == 'accuracy' else 1)
  return f"{_fmt(stats['mean'], label)} ± {std:.2f}"


def _finished(row: dict) -> str:
  """' (2/3 finished)' where some seeds diverged, else ''."""
  done = row.get('finished', row['seeds'])
  return '' if done == row['seeds'] else f" ({done}/{row['seeds']} finished)"


def _reach_cells(row: dict) -> tuple[str, str]:
  """(steps to the target, × budget) cells: the median over all seeds."""
  if 'reached' not in row:
    return '-', '-'
  seen = f"({row['reached']}/{row['seeds']} reached)"
  if row['median_steps_to_target'] is None:
    return f'not reached {seen}', '> 1'
  # an even number of seeds can put the median between two steps: as is
  median = row['median_steps_to_target']
  steps = f'{median:.0f}' if median == int(median) else f'{median:.1f}'
  return (f'{steps} {seen}',
          f"{row['fraction_of_budget']:.2f}")


def _flops_to_target(row: dict, key: str) -> str:
  if 'reached' not in row:
    return '-'
  value = row.get(key)
  return 'not reached' if value is None else _fmt_flops(value)


def markdown(summary: dict) -> str:
  label, n = summary['metric'], summary['num_steps']
  target = summary.get('target_metric')
  rows = summary['methods_summary']
  with_costs = any('upfront_flops' in row for row in rows.values())
  with_tests = any(row.get('test_seeds') for row in rows.values())
  split, test_split = summary.get('split', ''), summary.get('test_split', '')
  lines = []
  if summary.get('target'):
    where = (f"; test: {summary.get('data', '')}/{test_split}"
             if with_tests else '')
    lines += [f"{summary['target']} on {summary.get('data', '')}/{split}"
              f"{where}, {len(summary.get('seeds', []))} seeds:", '']
  head = (f"| init | {label} at step 0 | final {label} (mean ± std) | "
          'final loss |')
  if with_tests:
    head += f' test {label} (mean ± std) | test loss |'
  head += (f" steps to RandInit's final {label} ({_fmt(target, label)}), "
           'median | × budget |')
  if with_costs:
    head += (f" upfront FLOPs | fine-tuning FLOPs to RandInit's final "
             f"{label}, median | total FLOPs, median |")
  lines.append(head)
  lines.append('|---' * (6 + 2 * with_tests + 3 * with_costs) + '|')
  for method, row in rows.items():
    reach, frac = _reach_cells(row)
    line = (f"| {method} | {_pm(row['step0'], label)} | "
            f"{_pm(row['final'], label)}{_finished(row)} | "
            f"{_pm(row['final_loss'], 'loss')} |")
    if with_tests:
      line += (f" {_pm(row.get('test', {'mean': None}), label)} | "
               f"{_pm(row.get('test_loss', {'mean': None}), 'loss')} |")
    line += f' {reach} | {frac} |'
    if with_costs:
      up = _fmt_flops(row.get('upfront_flops'))
      what = row.get('upfront', '').split(';')[0].strip()
      line += (f" {up}{f' ({what})' if what and what != 'none' else ''} | "
               f"{_flops_to_target(row, 'median_finetune_flops_to_target')}"
               f" | {_flops_to_target(row, 'median_total_flops_to_target')}"
               ' |')
    lines.append(line)
  lines.append('')
  lines.append(
      f'Budget {n} steps. Step 0, final and steps to the target are on the '
      f"evaluation (validation) split{f' {split}' if split else ''}"
      + (f'; test on {test_split}, read once after the last step'
         if with_tests else '') +
      '. Mean ± sample std (ddof=1) over seeds; – when undefined (one '
      'seed). Steps to the target: per seed the first evaluated step at '
      "least as good as RandInit's mean final, a seed that never gets there "
      'counting as over budget; the median over all seeds (not reached when '
      'half or more never get there), with how many did; × budget = median '
      '/ budget.')
  gone = [f"{m} seed {seed} at step {step}" for m, row in rows.items()
          for seed, step in row.get('diverged', [])]
  if gone:
    lines.append(
        'Diverged (a non-finite training loss stopped the run): '
        f"{'; '.join(gone)}. A diverged seed keeps its evaluations until "
        'then, is left out of the final and test columns, and counts as '
        'over budget unless it reached the target before.')
  baseline = summary.get('baseline', 'random')
  if target is None and baseline in rows:
    lines.append(
        f'No target: {baseline} has no final metric for every seed (it '
        'diverged), so the steps and FLOPs to it are –.')
  elif target is None:
    lines.append(
        f'No target: {baseline} was not compared, so the steps and FLOPs to '
        'it are –; add it to config.methods.')
  if with_costs:
    by_what = {}
    for m, row in rows.items():
      if row.get('upfront_flops'):
        by_what.setdefault(row['upfront'], []).append(m)
    shared = '; '.join(f"{', '.join(ms)}: {what}"
                       for what, ms in by_what.items())
    lines.append(
        'FLOPs (2 per multiply-add): fine-tuning = steps to the target x '
        'FLOPs of one step, total = upfront + fine-tuning, medians over all '
        'seeds as the steps are. Upfront cost is paid once and shared'
        f"{': ' + shared if shared else ' (none here)'}.")
  return '\n'.join(lines)


def _band(seeds: dict, k: str):
  """(steps, mean, sample std) over the seeds that logged as many steps as
  the longest (a diverged seed stops early)."""
  runs = [sorted(rows, key=lambda r: r['step']) for rows in seeds.values()]
  steps = [r['step'] for r in max(runs, key=len)]
  values = np.array([[r[k] for r in rows[:len(steps)]] for rows in runs
                     if len(rows) >= len(steps)], dtype=float)
  if k == 'eval_accuracy':
    values = 100 * values
  std = (values.std(0, ddof=1) if len(values) > 1
         else np.full(len(steps), np.nan))  # one seed: no band
  return np.array(steps, dtype=float), values.mean(0), std


def plot(curves: dict, summary: dict, path: str) -> str:
  """Metric and loss over steps: mean per method with ±1 std bands.

  With costs in the summary, a third panel shows the metric against
  cumulative FLOPs (upfront + steps x step FLOPs), the equal-compute view.
  """
  family = 'vit' if summary['metric'] == 'accuracy' else 'gpt2'
  key, label, _ = METRICS[family]
  rows = summary['methods_summary']
  with_costs = bool(curves) and all(
      'upfront_flops' in rows.get(m, {}) for m in curves)
  # Imported here: matplotlib adds about 0.5 s to every job's start.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(16, 4) if with_costs else (11, 4))
  axes = fig.subplots(1, 3 if with_costs else 2)
  for method, seeds in curves.items():
    xs = [(axes[0], key, 1.0, 0.0), (axes[1], 'eval_loss', 1.0, 0.0)]
    if with_costs:
      xs.append((axes[2], key, rows[method]['step_flops'],
                 rows[method]['upfront_flops']))
    for ax, k, scale, offset in xs:
      steps, mean, std = _band(seeds, k)
      x = offset + scale * steps
      line, = ax.plot(x, mean, label=method, lw=1.5)
      ax.fill_between(x, mean - std, mean + std, alpha=0.2,
                      color=line.get_color())
  metric_axes = [axes[0], axes[2]] if with_costs else [axes[0]]
  target = summary.get('target_metric')
  for ax in metric_axes:
    if target is not None and math.isfinite(target):
      ax.axhline(100 * target if label == 'accuracy' else target,
                 color='gray', ls='--', lw=1, label="RandInit's final")
    ax.set_ylabel(f'{label} (%)' if label == 'accuracy' else label)
    if label == 'perplexity':
      ax.set_yscale('log')
  axes[1].set_ylabel('eval loss')
  for ax in axes[:2]:
    ax.set_xlabel('fine-tuning step')
  if with_costs:
    axes[2].set_xlabel('FLOPs: upfront + fine-tuning')
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{summary.get('target', '')} on {summary.get('data', '')}: "
               f"mean ± std over {len(summary.get('seeds', [])) or '?'} seeds")
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)
  return path
