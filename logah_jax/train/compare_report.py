"""Tables and plots of a comparison (pure functions of the eval rows).

"Steps to reach RandInit's final metric": the target is the mean over seeds
of RandInit's metric at the end of the budget; for each seed of a method, the
first evaluated step whose metric is at least as good; the column gives the
mean over the seeds that reach it, how many did, and that mean as a fraction
of the budget (RandInit itself needs about the whole budget by definition).
The resolution is the evaluation interval.
"""

from __future__ import annotations

import math

from matplotlib.figure import Figure
import numpy as np

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


def summarize(curves: dict, *, family: str, num_steps: int,
              baseline: str = 'random') -> dict:
  """curves: {method: {seed: [eval rows]}} -> JSON-able summary."""
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
    out['methods_summary'][method] = row
  return out


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
  lines.append(f"| init | {label} at step 0 | final {label} (mean ± std) | "
               f"final loss | steps to RandInit's final {label} "
               f"({_fmt(target, label)}) | × budget |")
  lines.append('|---|---|---|---|---|---|')
  for method, row in summary['methods_summary'].items():
    reach = '-'
    frac = '-'
    if 'reached' in row:
      k, total = row['reached'], row['seeds']
      reach = (f"{row['mean_steps_to_target']:.0f} ({k}/{total} seeds)"
               if k else f'not reached (0/{total})')
      frac = (f"{row['fraction_of_budget']:.2f}"
              if row['fraction_of_budget'] is not None else '-')
    lines.append(f"| {method} | {_pm(row['step0'], label)} | "
                 f"{_pm(row['final'], label)} | "
                 f"{_pm(row['final_loss'], 'loss')} | {reach} | {frac} |")
  lines.append('')
  lines.append(f'Budget {n} steps; mean ± std over seeds.')
  return '\n'.join(lines)


def plot(curves: dict, summary: dict, path: str) -> str:
  """Metric and loss over steps: mean per method with ±1 std bands."""
  family = 'vit' if summary['metric'] == 'accuracy' else 'gpt2'
  key, label, _ = METRICS[family]
  fig = Figure(figsize=(11, 4))
  axes = fig.subplots(1, 2)
  for method, seeds in curves.items():
    for ax, k in zip(axes, (key, 'eval_loss')):
      runs = [sorted(rows, key=lambda r: r['step']) for rows in seeds.values()]
      steps = [r['step'] for r in runs[0]]
      values = np.array([[r[k] for r in rows[:len(steps)]] for rows in runs
                         if len(rows) >= len(steps)], dtype=float)
      if k == 'eval_accuracy':
        values = 100 * values
      mean, std = values.mean(0), values.std(0)
      line, = ax.plot(steps, mean, label=method, lw=1.5)
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2,
                      color=line.get_color())
  target = summary.get('target_metric')
  if target is not None and math.isfinite(target):
    axes[0].axhline(100 * target if label == 'accuracy' else target,
                    color='gray', ls='--', lw=1, label="RandInit's final")
  axes[0].set_ylabel(f'{label} (%)' if label == 'accuracy' else label)
  if label == 'perplexity':
    axes[0].set_yscale('log')
  axes[1].set_ylabel('eval loss')
  for ax in axes:
    ax.set_xlabel('fine-tuning step')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{summary.get('target', '')} on {summary.get('data', '')}: "
               f"mean ± std over {len(summary.get('seeds', [])) or '?'} seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path
