"""Tables and plots of a comparison (pure functions of the eval rows).

"Steps to reach RandInit's final metric": the target is the mean over seeds
of RandInit's metric at the end of the budget; for each seed of a method, the
first evaluated step whose metric is at least as good; the column gives the
mean over the seeds that reach it, how many did, and that mean as a fraction
of the budget (RandInit itself needs about the whole budget by definition).
The resolution is the evaluation interval.

Equal compute: steps hide the work done before step 0, so a comparison may
pass `costs` (`flops.py` computes them): each method's upfront FLOPs (GHN
training, source pretraining; zero for RandInit) and the FLOPs of one
fine-tuning step. The summary then adds the fine-tuning FLOPs to reach the
target (steps to target x step FLOPs) and the total (upfront + those); the
upfront cost is paid once and shared by every target it serves, which the
table says under it.
"""

from __future__ import annotations

import math
import numbers

from matplotlib.figure import Figure
import numpy as np

from logah_jax import files
from logah_jax.validation import ConfigError

METRICS = {  # family -> (eval row key, label, higher is better)
    'vit': ('eval_accuracy', 'accuracy', True),
    'gpt2': ('eval_perplexity', 'perplexity', False),
}


def _stats(values) -> dict:
  values = [v for v in values if v is not None]
  if not values:
    return {'mean': None, 'std': None}
  return {'mean': float(np.mean(values)), 'std': float(np.std(values))}


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


def _mean_reached(values):
  reached = [v for v in values if v is not None]
  return float(np.mean(reached)) if reached else None


def summarize(curves: dict, *, family: str, num_steps: int,
              baseline: str = 'random', costs: dict | None = None) -> dict:
  """curves: {method: {seed: [eval rows]}} -> JSON-able summary.

  Args:
    curves: eval rows per method and seed.
    family: 'vit' or 'gpt2' (which metric, which direction).
    num_steps: the fine-tuning budget.
    baseline: the method whose final metric is the target.
    costs: optional {method: {'upfront_flops', 'upfront' (what the upfront
      cost is and what shares it), 'step_flops' (one fine-tuning step of
      the target)}} for every method; adds FLOPs to each row.

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
           'seeds': len(seeds)}
    if target is not None:
      steps = []
      for rows in seeds.values():
        hit = [r['step'] for r in sorted(rows, key=lambda r: r['step'])
               if r.get(key) is not None and better(r[key], target)]
        steps.append(hit[0] if hit else None)
      reached = [s for s in steps if s is not None]
      row['steps_to_target'] = steps
      row['reached'] = len(reached)
      row['mean_steps_to_target'] = (float(np.mean(reached)) if reached
                                     else None)
      row['fraction_of_budget'] = (row['mean_steps_to_target'] / num_steps
                                   if reached else None)
    if checked is not None:
      row.update(checked[method])
      if target is not None:
        _add_flops_to_target(row)
    out['methods_summary'][method] = row
  return out


def _add_flops_to_target(row: dict) -> None:
  """Per-seed fine-tuning and total FLOPs to the target, and their means."""
  up, step = row['upfront_flops'], row['step_flops']
  finetune = [None if s is None else s * step for s in row['steps_to_target']]
  total = [None if f is None else up + f for f in finetune]
  row['finetune_flops_to_target'] = finetune
  row['mean_finetune_flops_to_target'] = _mean_reached(finetune)
  row['total_flops_to_target'] = total
  row['mean_total_flops_to_target'] = _mean_reached(total)


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
  if stats['mean'] is None:
    return '-'
  std = stats['std'] * (100 if label == 'accuracy' else 1)
  return f"{_fmt(stats['mean'], label)} ± {std:.2f}"


def markdown(summary: dict) -> str:
  label, n = summary['metric'], summary['num_steps']
  target = summary.get('target_metric')
  lines = []
  if summary.get('target'):
    lines += [f"{summary['target']} on {summary.get('data', '')}/"
              f"{summary.get('split', '')}, {len(summary.get('seeds', []))} "
              'seeds:', '']
  rows = summary['methods_summary']
  with_costs = any('upfront_flops' in row for row in rows.values())
  head = (f"| init | {label} at step 0 | final {label} (mean ± std) | "
          f"final loss | steps to RandInit's final {label} "
          f"({_fmt(target, label)}) | × budget |")
  if with_costs:
    head += (f" upfront FLOPs | fine-tuning FLOPs to RandInit's final "
             f"{label} | total FLOPs |")
  lines.append(head)
  lines.append('|---' * (9 if with_costs else 6) + '|')
  for method, row in rows.items():
    reach = '-'
    frac = '-'
    if 'reached' in row:
      k, total = row['reached'], row['seeds']
      reach = (f"{row['mean_steps_to_target']:.0f} ({k}/{total} seeds)"
               if k else f'not reached (0/{total})')
      frac = (f"{row['fraction_of_budget']:.2f}"
              if row['fraction_of_budget'] is not None else '-')
    line = (f"| {method} | {_pm(row['step0'], label)} | "
            f"{_pm(row['final'], label)} | "
            f"{_pm(row['final_loss'], 'loss')} | {reach} | {frac} |")
    if with_costs:
      up = _fmt_flops(row.get('upfront_flops'))
      what = row.get('upfront', '').split(';')[0].strip()
      line += (f" {up}{f' ({what})' if what and what != 'none' else ''} | "
               f"{_fmt_flops(row.get('mean_finetune_flops_to_target'))} | "
               f"{_fmt_flops(row.get('mean_total_flops_to_target'))} |")
    lines.append(line)
  lines.append('')
  lines.append(f'Budget {n} steps; mean ± std over seeds.')
  if with_costs:
    by_what = {}
    for m, row in rows.items():
      if row.get('upfront_flops'):
        by_what.setdefault(row['upfront'], []).append(m)
    shared = '; '.join(f"{', '.join(ms)}: {what}"
                       for what, ms in by_what.items())
    lines.append(
        'FLOPs (2 per multiply-add): fine-tuning = steps to the target x '
        'FLOPs of one step, total = upfront + fine-tuning, means over the '
        'seeds that reach the target. Upfront cost is paid once and shared'
        f"{': ' + shared if shared else ' (none here)'}.")
  return '\n'.join(lines)


def _band(seeds: dict, k: str):
  """(steps, mean, std) over the seeds that logged every step of the first."""
  runs = [sorted(rows, key=lambda r: r['step']) for rows in seeds.values()]
  steps = [r['step'] for r in runs[0]]
  values = np.array([[r[k] for r in rows[:len(steps)]] for rows in runs
                     if len(rows) >= len(steps)], dtype=float)
  if k == 'eval_accuracy':
    values = 100 * values
  return np.array(steps, dtype=float), values.mean(0), values.std(0)


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
