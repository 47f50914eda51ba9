"""The extrapolation curve: predicting targets wider and deeper than training.

A GHN is trained once (or loaded). Its largest training width W and depth D
set the targets: width m x W for each multiple m, at depth
`depth_multiple` x D, with a fixed head size. Every target is fine-tuned
from RandInit and from the GHN's prediction under each fill
(`ghn.FILLS`: how rows and columns past W are made), seeds x budget as in
the comparison harness, evaluated on the validation split. At m = 1 the
fills coincide, so one prediction is fine-tuned and reported for all.
Results: extrapolation.json, extrapolation.md (a table per family) and
extrapolation.png (step-0 metric and steps to RandInit's final metric
against m). docs/extrapolation.md explains the fills and the findings.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import numpy as np

from logah_jax import arch as arch_lib
from logah_jax import files
from logah_jax import ghn as ghn_lib
from logah_jax import inits
from logah_jax.inits.ghn_prediction import method_of
from logah_jax.train import compare
from logah_jax.train import compare_report
from logah_jax.train import compared_runs
from logah_jax.train import finetuning
from logah_jax.train import ghn_training
from logah_jax.train import report
from logah_jax.validation import ConfigError, check_int, sub_config

RESULT_JSON, RESULT_MD, RESULT_PNG = ('extrapolation.json',
                                      'extrapolation.md', 'extrapolation.png')
BASELINE = 'random'


def _floats(text: str, field: str) -> list[float]:
  try:
    values = [float(v) for v in str(text).split(',') if v.strip()]
  except ValueError as e:
    raise ConfigError(f'{field}={text!r}: {e}') from e
  if not values or min(values) < 1:
    raise ConfigError(f'{field}={text!r} must list numbers >= 1')
  return values


def _depth_multiple(value) -> float:
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or value <= 0):
    raise ConfigError(f'config.depth_multiple={value!r} must be a number > 0')
  return float(value)


def fills_of(config) -> list[str]:
  fills = [f.strip() for f in config.fills.split(',') if f.strip()]
  for f in fills:
    if f not in ghn_lib.FILLS:
      raise ConfigError(f'config.fills: {f!r} is not one of {ghn_lib.FILLS}')
  if not fills or len(set(fills)) != len(fills):
    raise ConfigError(f'config.fills={config.fills!r} is empty or repeats')
  return fills


def targets(space: arch_lib.Space, trained_width: int, trained_depth: int,
            multiples, depth_multiple: float, head_size: int,
            patch: int = 0) -> list[tuple[float, arch_lib.ArchConfig]]:
  """(m, target) for each width multiple m: width round(m x W) rounded to
  the head size, depth round(depth_multiple x D), heads = width / head
  size; the rest from the training space."""
  depth = max(1, round(depth_multiple * trained_depth))
  out = []
  for m in multiples:
    width = max(head_size, round(m * trained_width / head_size) * head_size)
    heads = width // head_size
    if space.family == 'vit':
      target = arch_lib.ViTConfig(
          depth=depth, width=width, heads=heads, mlp_dim=space.mlp_ratio *
          width, patch=patch or space.patches[-1], image_size=space.image_size,
          channels=space.channels, num_classes=space.num_classes)
    else:
      target = arch_lib.GPT2Config(
          depth=depth, width=width, heads=heads, vocab_size=space.vocab_size,
          n_positions=space.n_positions, tie_embeddings=space.tie_embeddings)
    out.append((m, target))
  return out


def _row(summary: dict, method: str, seeds: dict) -> dict:
  s = summary['methods_summary'][method]
  key = compare_report.METRICS[summary['family']][0]
  at = lambda step, k: [r[k] for rows in seeds.values() for r in rows
                        if r['step'] == step]
  loss0, finals = at(0, 'eval_loss'), at(summary['num_steps'], key)
  return {'step0': s['step0']['mean'], 'final': s['final']['mean'],
          'step0_loss': float(np.mean(loss0)) if loss0 else None,
          'final_std': (float(np.std(finals, ddof=1)) if len(finals) > 1
                        else None),  # sample std over seeds
          'steps_to_target': s.get('steps_to_target'),
          'median_steps': compare_report.median_over_seeds(
              s.get('steps_to_target')),
          'diverged': s['diverged']}


def target_dir(workdir: str, target: arch_lib.ArchConfig) -> str:
  return os.path.join(workdir, 'targets', target.name)


def target_config(finetune, target: arch_lib.ArchConfig):
  """`finetune` (config.finetune) with its `arch` set to `target`."""
  ft = copy.deepcopy(finetune)
  with ft.unlocked():
    ft.arch = arch_lib.to_spec(target)
  return ft


def target_methods(method_name: str, fills, wider: bool, ghn_dir: str,
                   fill_noise) -> dict:
  """{label: InitMethod} fine-tuned on one target: RandInit and the
  prediction under each fill (one fill when the target is no wider)."""
  methods = {BASELINE: inits.make('random')}
  for fill in (fills if wider else fills[:1]):
    methods[fill] = inits.make(method_name, ghn_workdir=ghn_dir,
                               ghn_fill=fill, ghn_fill_noise=fill_noise)
  return methods


def check_plan(run, plan, fills, trained_width: int, finetune, *,
               workdir: str, ghn_dir: str, seeds, fill_noise,
               compilation_cache: str = '') -> None:
  """Before any training: the GHN of `run` can predict every target under
  each fill, each target's fine-tuning run is valid, its data exist and
  are not what the GHN trains on, and its workdir holds no runs of another
  config."""
  try:
    method_name = method_of(run.ghn_cfg)
  except ConfigError as e:
    raise ConfigError(f'config.ghn_train.ghn: {e}') from e
  for _, target in plan:
    for fill in (fills if target.width > trained_width else fills[:1]):
      # as `ghn.load` will set them for the trained GHN
      cfg = dataclasses.replace(
          run.ghn_cfg, fill=fill,
          trained_width=run.ghn_cfg.trained_width or trained_width)
      try:
        ghn_lib.check_archs(cfg, run.space.family, [target])
      except ValueError as e:
        raise ConfigError(f'config.ghn_train: the GHN cannot predict the '
                          f'target {target.name} (fill {fill!r}): {e}') from e
    # The target's image size, channels, classes or vocabulary are the GHN
    # space's: a mismatch with the fine-tuning data names that section.
    with sub_config('config.finetune',
                    {'config.arch': 'config.ghn_train.space'}):
      ft_run = finetuning.build_run(target_config(finetune, target),
                                    init=inits.make(BASELINE))
    compare.check_upstream_splits([('config.ghn_train.data', run.data)],
                                  ft_run)
    compared_runs.check_runs(
        target_methods(method_name, fills, target.width > trained_width,
                       ghn_dir, fill_noise),
        seeds, target_config(finetune, target), target_dir(workdir, target),
        compilation_cache)
  compare.open_data([('config.ghn_train.data', run.data, run.data.split)] +
                    compare.run_reads('config.finetune.data', ft_run))


def run_extrapolation(config, workdir: str) -> dict:
  """Trains (or resumes) the GHN, fine-tunes every (target, init, seed)."""
  fills = fills_of(config)
  multiples = _floats(config.width_multiples, 'config.width_multiples')
  seeds = list(range(check_int(config.seeds, 'config.seeds')))
  head_size = check_int(config.head_size, 'config.head_size')
  fill_noise = config.get('fill_noise', -1.0)
  fill_noise = None if fill_noise < 0 else float(fill_noise)  # -1: default
  with sub_config('config.ghn_train'):
    run = ghn_training.build_run(config.ghn_train)
  ghn_dir = config.ghn_workdir or os.path.join(workdir, 'ghn')
  if config.ghn_workdir:
    files.check_writable_dir(config.ghn_workdir, 'config.ghn_workdir')
  candidates = run.sampler.candidates()
  trained_width = max(a.width for a in candidates)
  trained_depth = max(a.depth for a in candidates)
  patch = check_int(config.get('patch', 0), 'config.patch', minimum=0)
  depth_multiple = _depth_multiple(config.depth_multiple)
  try:  # widths are multiples of the head size: only the patch can fail
    plan = targets(run.space, trained_width, trained_depth, multiples,
                   depth_multiple, head_size, patch)
  except ValueError as e:  # a patch that does not divide the images
    raise ConfigError(f'config.patch={patch}: a target cannot be built: '
                      f'{e}') from e
  finetune = config.finetune
  check_plan(run, plan, fills, trained_width, finetune, workdir=workdir,
             ghn_dir=ghn_dir, seeds=seeds, fill_noise=fill_noise,
             compilation_cache=config.compilation_cache)
  os.makedirs(workdir, exist_ok=True)
  report.say(f'=== GHN ({run.space_name}: width <= {trained_width}, depth '
             f'<= {trained_depth}) ===')
  ghn_training.train(run, ghn_dir)
  method_name = method_of(ghn_lib.load(ghn_dir).cfg)
  results = {'ghn_workdir': ghn_dir, 'trained_width': trained_width,
             'trained_depth': trained_depth, 'fills': fills, 'seeds': seeds,
             'num_steps': int(finetune.train.num_steps),
             'split': finetune.eval.split, 'family': run.space.family,
             'fill_noise': fill_noise,
             'targets': []}
  for m, target in plan:
    report.say(f'=== target {target.name} ({m:g}x width) ===')
    wider = target.width > trained_width
    methods = target_methods(method_name, fills, wider, ghn_dir, fill_noise)
    runs = compared_runs.finetune_each(
        methods, seeds, target_config(finetune, target),
        target_dir(workdir, target), config.compilation_cache)
    curves, diverged = runs.curves, runs.diverged
    if not wider:  # the fills coincide: one prediction stands for all
      curves.update({f: curves[fills[0]] for f in fills[1:]})
      if fills[0] in diverged:
        diverged.update({f: diverged[fills[0]] for f in fills[1:]})
    summary = compare_report.summarize(
        curves, family=target.family, num_steps=results['num_steps'],
        baseline=BASELINE, diverged=diverged)
    summary['family'] = target.family
    results['targets'].append({
        'multiple': m, 'ratio': target.width / trained_width,
        'arch': target.name, 'width': target.width,
        'depth': target.depth, 'target_metric': summary['target_metric'],
        'metric': summary['metric'],
        'rows': {k: _row(summary, k, curves[k]) for k in curves}})
    write_results(results, workdir)  # after each target: a partial curve
  return results


def markdown(results: dict) -> str:
  fills = results['fills']
  budget = results['num_steps']
  out = [f"GHN trained up to width {results['trained_width']} and depth "
         f"{results['trained_depth']}; targets at depth "
         f"{results['targets'][0]['depth']}; {len(results['seeds'])} seeds, "
         f"budget {budget} steps, metrics on {results['split']}.", '',
         '| width (x trained) | RandInit final | ' + ' | '.join(
             f'{f}: step 0 (loss) / final / steps to RandInit final'
             for f in fills) + ' | RandInit step 0 (loss) |',
         '|---|---|' + '---|' * (len(fills) + 1)]
  for t in results['targets']:
    fmt = _formatter(t['metric'])
    rand = t['rows'][BASELINE]
    cells = []
    for f in fills:
      r = t['rows'][f]
      if t['target_metric'] is None:  # RandInit diverged: no target
        steps = '-'
      else:
        steps = ('not reached' if r['median_steps'] is None
                 else f"{r['median_steps']:.0f}")
      cells.append(f"{fmt(r['step0'])} ({_loss(r)}) / {fmt(r['final'])}"
                   f"{_std(r, t['metric'])}{_diverged(r)} / {steps}")
    out.append(f"| {t['width']} ({t['ratio']:.3g}x) | {fmt(rand['final'])}"
               f"{_std(rand, t['metric'])}{_diverged(rand)} "
               f"| " + ' | '.join(cells) +
               f" | {fmt(rand['step0'])} ({_loss(rand)}) |")
  out += ['', 'Final: mean ± sample std (ddof=1) over seeds. Steps to '
          "RandInit final (RandInit's mean final metric): the median over "
          'all seeds of the first evaluated step at least as good, a seed '
          'that never gets there counting as over budget.']
  if any(r.get('diverged') for t in results['targets']
         for r in t['rows'].values()):
    out.append('Diverged: seeds whose training loss turned non-finite; '
               'they are left out of the final metric and count as over '
               'budget unless they reached the target before. Where '
               "RandInit diverged there is no target ('-').")
  return '\n'.join(out)


def _diverged(row: dict) -> str:
  gone = len(row.get('diverged') or [])
  return f' ({gone} diverged)' if gone else ''


def _std(row: dict, metric: str) -> str:
  if row.get('final_std') is None:
    return ''
  scale = 100 if metric == 'accuracy' else 1
  return f" ± {scale * row['final_std']:.{1 if scale == 100 else 2}f}"


def _loss(row: dict) -> str:
  return '-' if row.get('step0_loss') is None else f"{row['step0_loss']:.2f}"


def _formatter(metric: str):
  if metric == 'accuracy':
    return lambda v: '-' if v is None else f'{100 * v:.1f}%'
  return lambda v: '-' if v is None else f'{v:.2f}'


def plot(results: dict, path: str) -> str:
  # Imported here: matplotlib adds about 0.5 s to every job's start.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(10, 4))
  ax0, ax1 = fig.subplots(1, 2)
  xs = [t['ratio'] for t in results['targets']]
  budget = results['num_steps']
  metric = results['targets'][0]['metric']
  for method in [BASELINE] + results['fills']:
    step0 = [t['rows'][method]['step0'] for t in results['targets']]
    ax0.plot(xs, step0, 'o-', label=method)
    if method != BASELINE:
      ys = [math.nan if t['target_metric'] is None  # no target: no point
            else budget * 1.1 if t['rows'][method]['median_steps'] is None
            else t['rows'][method]['median_steps']
            for t in results['targets']]
      ax1.plot(xs, ys, 'o-', label=method)
  ax1.axhline(budget, color='gray', lw=0.8, ls='--')
  ax0.set(xlabel='target width / largest training width',
          ylabel=f'validation {metric} at step 0',
          title=f"depth {results['targets'][0]['depth']} (trained <= "
          f"{results['trained_depth']})")
  ax1.set(xlabel='target width / largest training width',
          ylabel="steps to RandInit's final (median)",
          title=f'above the dashed line: not reached in {budget}')
  if metric == 'perplexity':
    ax0.set_yscale('log')
  for ax in (ax0, ax1):
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  files.save_figure(fig, path)
  return path


def write_results(results: dict, workdir: str) -> str:
  files.write_json(os.path.join(workdir, RESULT_JSON), results, indent=2)
  table = markdown(results)
  files.write_text(os.path.join(workdir, RESULT_MD), table + '\n')
  plot(results, os.path.join(workdir, RESULT_PNG))
  report.say(table, f'Plot: {os.path.join(workdir, RESULT_PNG)}')
  return table
