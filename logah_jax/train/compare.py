"""The comparison harness: init methods x seeds, one target, one budget.

Each GHN method first gets its GHN trained (in `<ghn_root>/<method>`, resumed
or skipped when complete) with the same recipe and data, only the decoder
swapped (`ghn_training_config`); the init method then only loads it. Growth
methods get their source the same way: a small model pretrained once in
`<workdir>/source` (unless `config.source.params` names one), and LiGO its
operator, trained once in `<workdir>/ligo`. Every
(method, seed) run is a resumable fine-tuning run in
`<workdir>/runs/<method>/seed<k>`, so an interrupted comparison continues
where it stopped. The curves, step 0, the final metric and the steps to
RandInit's final are read on the validation split (`finetune.eval.split`);
the test split (`finetune.eval.test_split`) is read once per run, after its
last step, and only reported. The result is compare.json, compare.md (final
validation and test metrics mean ± std over seeds, the metric at step 0, the
median over seeds of the steps each method needs to reach RandInit's final
metric: `compare_report`) and compare.png (curves with ±1 std bands).
"""

from __future__ import annotations

import copy
import dataclasses
import os

from logah_jax import checkpoint as ckpt_lib
from logah_jax import files
from logah_jax import ghn as ghn_lib
from logah_jax import growth
from logah_jax import inits
from logah_jax.data import storage
from logah_jax.inits import growth_source
from logah_jax.inits import save as init_save
from logah_jax.train import compare_report
from logah_jax.train import compared_runs
from logah_jax.train import finetuning
from logah_jax.train import flops
from logah_jax.train import ghn_training
from logah_jax.train import ligo_training
from logah_jax.train import report
from logah_jax.validation import ConfigError, check_int, sub_config

RESULT_JSON, RESULT_MD, RESULT_PNG = ('compare.json', 'compare.md',
                                      'compare.png')


def methods_of(config) -> list[str]:
  names = [m.strip() for m in config.methods.split(',') if m.strip()]
  if not names:
    raise ConfigError('config.methods is empty')
  for name in names:
    if name not in inits.METHODS:
      raise ConfigError(f'config.methods: {name!r} is not one of '
                        f'{inits.METHODS}')
  if len(set(names)) != len(names):
    raise ConfigError(f'config.methods={config.methods!r} repeats a method')
  return names


def ghn_training_config(base, method: str, ghn3_name: str = 'ghn3-tiny'):
  """The GHN-training config of `method`, derived from a LoGAH config `base`.

  GHN-3 takes the named full-rank GHN, which must have the base's
  Graphormer sizes (layers, hid, heads: as the LoGAH of the same size name),
  and keeps the base's classes, cutoff, dtype and normalisation, so only the
  decoder differs.
  """
  if method not in inits.VARIANTS:
    raise ConfigError(f'GHN init method {method!r} is not one of '
                      f'{tuple(inits.VARIANTS)}')
  config = copy.deepcopy(base)
  with config.unlocked():
    if method == 'ghn3':
      keep = {k: base.ghn[k] for k in ('num_classes', 'cutoff', 'dtype',
                                       'normalize', 'max_degree',
                                       'max_input_dist', 'final_ln')}
      try:
        cfg = ghn_lib.named(ghn3_name, **keep)
      except ValueError as e:
        raise ConfigError(f'config.ghn3_name: {e}') from e
      if cfg.decoder != 'fullrank':
        raise ConfigError(f'config.ghn3_name={ghn3_name!r} is not a GHN-3 '
                          '(full-rank) GHN')
      sizes = ('layers', 'hid', 'heads')
      have = {k: getattr(cfg, k) for k in sizes}
      want = {k: base.ghn[k] for k in sizes}
      if have != want:  # then more than the decoder would differ
        same = [n for n in ghn_lib.names()
                if ghn_lib.named(n).decoder == 'fullrank'
                and {k: getattr(ghn_lib.named(n), k) for k in sizes} == want]
        raise ConfigError(
            f'config.ghn3_name={ghn3_name!r} has Graphormer sizes {have} but '
            f'config.ghn_train.ghn has {want}: GHN-3 and LoGAH are compared '
            'with the same Graphormer, only the decoder swapped; '
            + (f'set config.ghn3_name={same[0]!r}' if same else
               'no named GHN-3 has these sizes, so leave ghn3 out of '
               'config.methods'))
      for key, value in ghn_lib.to_dict(cfg).items():
        config.ghn[key] = value
    else:
      if base.ghn.decoder != 'lowrank':
        raise ConfigError(f'the base GHN config has decoder '
                          f'{base.ghn.decoder!r}; LoGAH methods need lowrank')
      config.ghn.factorization = inits.VARIANTS[method]['factorization']
  return config


# The LiGO run's fields that `ligo_config` takes from `config.ligo` (its
# builder's path -> the user's); the rest are `config.finetune`'s.
LIGO_FIELDS = {**ligo_training.LIGO_SECTION_FIELDS,
               'config.ligo': 'config.ligo'}


def ligo_config(config):
  """The LiGO operator run of a comparison: the target's fine-tuning config
  (same data and batch) with `config.ligo`'s steps and optimizer (its
  builder's errors name fields through `LIGO_FIELDS`)."""
  c = copy.deepcopy(config.finetune)
  with c.unlocked():
    c.job = 'ligo'
    c.train.num_steps = config.ligo.num_steps
    c.optim = copy.deepcopy(config.ligo.optim)
    c.checkpoint.every_steps = config.ligo.num_steps
    c.ligo = {k: config.ligo[k] for k in ('init', 'sharing', 'split_noise')}
    for key in ('test_split', 'test_max_batches'):  # it evaluates nothing:
      if key in c.eval:  # its config.json stays that of earlier versions
        del c.eval[key]
    if 'scan_blocks' in c:  # fine-tuning's block layout; LiGO never reads it
      del c['scan_blocks']
  return c


@dataclasses.dataclass
class Plan:
  """What a comparison trains before fine-tuning, and its init methods."""

  run: finetuning.FinetuneRun
  methods: dict
  seeds: list
  ghn_runs: dict            # method -> (GHN run, its workdir)
  source_run: object = None  # FinetuneRun of the growth source, if trained
  source_dir: str = ''
  ligo_run: object = None
  ligo_dir: str = ''


def _growth_plan(config, workdir, target, plan: Plan, names) -> None:
  """Checks the growth source and LiGO run; fills `plan` (no training)."""
  if config.source.params:
    plan.source_dir = config.source.params
    small = growth_source.source_arch(plan.source_dir)
  else:
    if 'finetune' not in config.source:
      raise ConfigError('config.source.params is empty and no '
                        'config.source.finetune is set to pretrain one')
    with sub_config('config.source.finetune'):
      plan.source_run = finetuning.build_run(config.source.finetune)
    small = plan.source_run.arch
    plan.source_dir = os.path.join(workdir, 'source', finetuning.FINAL_PARAMS)
  try:
    growth.check_pair(small, target)
  except ConfigError as e:  # the pair is wrong, not the source alone
    raise ConfigError(
        f'config.finetune.arch (grown from config.source): {e}') from e
  if 'ligo' in names:
    with sub_config('config.finetune', LIGO_FIELDS, context='config.ligo'):
      plan.ligo_run = ligo_training.build_run(ligo_config(config),
                                              plan.source_dir, small)
    plan.ligo_dir = os.path.join(workdir, 'ligo')


def _plan(config, workdir) -> Plan:
  """Checks everything (no training yet)."""
  names = methods_of(config)
  seeds = list(range(check_int(config.seeds, 'config.seeds')))
  ghn_root = config.ghn_workdir or os.path.join(workdir, 'ghn')
  if config.ghn_workdir:
    files.check_writable_dir(config.ghn_workdir, 'config.ghn_workdir')
  with sub_config('config.finetune'):
    target = finetuning.target_arch(config.finetune)
  plan = Plan(run=None, methods={}, seeds=seeds, ghn_runs={})
  if any(n in inits.GROWTH_METHODS for n in names):
    _growth_plan(config, workdir, target, plan, names)
  options = {'split_noise': config.growth.split_noise,
             'mode': config.growth.bert2bert_mode}
  for name in names:
    ghn_dir = os.path.join(ghn_root, name)
    if name in inits.GHN_METHODS:
      ghn_config = ghn_training_config(config.ghn_train, name,
                                       config.ghn3_name)
      with sub_config('config.ghn_train'):
        ghn_run = ghn_training.build_run(ghn_config)
      if ghn_run.family != target.family:
        raise ConfigError(f'config.ghn_train trains {ghn_run.family} GHNs but'
                          f' the target {target.name} is a {target.family}')
      try:
        ghn_lib.check_archs(ghn_run.ghn_cfg, target.family, [target])
      except ValueError as e:
        raise ConfigError(f'config.finetune.arch: {e}') from e
      plan.ghn_runs[name] = (ghn_run, ghn_dir)
    plan.methods[name] = inits.make(
        name, ghn_workdir=ghn_dir, source=plan.source_dir,
        operator=(ligo_training.operator_dir(plan.ligo_dir) if plan.ligo_dir
                  else ''),
        growth_options=options)
  with sub_config('config.finetune'):
    plan.run = finetuning.build_run(config.finetune,
                                    init=plan.methods[names[0]])
  upstream = [('config.ghn_train.data', r.data) for r, _ in
              plan.ghn_runs.values()]
  if plan.source_run is not None:
    upstream.append(('config.source.finetune.data', plan.source_run.data))
  check_upstream_splits(upstream, plan.run)
  open_data(_reads(plan))
  compared_runs.check_runs(plan.methods, seeds, config.finetune, workdir,
                           config.compilation_cache)
  return plan


def check_upstream_splits(upstream, target) -> None:
  """What trains before fine-tuning (GHNs, a growth source: (field, its
  DataSpec) in `upstream`) must not read the `target` run's validation or
  test split: an init that has seen the data it is measured on would win
  the comparison unfairly."""
  def dataset(data):
    return data.name, storage.resolve_data_dir(data.data_dir or None)

  for field, data in upstream:
    if dataset(data) != dataset(target.data):
      continue  # another dataset
    for name, split in (('split', target.eval.split),
                        ('test_split', target.eval.test_split)):
      if split and data.trains_on(split):
        raise ConfigError(
            f'{field}.split={data.split!r} reads config.finetune.eval.{name}='
            f'{split!r}, the split the compared runs are measured on; train '
            'it on other data')


def run_reads(field: str, run) -> list:
  """(field, DataSpec, split) of every split a fine-tuning run reads."""
  return [(field, run.data, split) for split in (
      run.data.split, run.eval.split, run.eval.test_split)]


def _reads(plan: Plan) -> list:
  reads = [('config.ghn_train.data', r.data, r.data.split)
           for r, _ in plan.ghn_runs.values()]
  if plan.source_run is not None:
    reads += run_reads('config.source.finetune.data', plan.source_run)
  if plan.ligo_run is not None:
    reads.append(('config.finetune.data', plan.ligo_run.data,
                  plan.ligo_run.data.split))
  return reads + run_reads('config.finetune.data', plan.run)


def open_data(reads) -> None:
  """Opens each (field, DataSpec, split) a job will read ('' = none), so
  that data that are missing fail before anything is trained or written;
  the error names the field."""
  seen = set()
  for field, data, split in reads:
    key = (data.name, data.data_dir, data.tokenizer, data.block_size, split)
    if not split or key in seen:
      continue
    seen.add(key)
    try:
      data.source(split)
    except ConfigError as e:
      raise type(e)(f'{field}: {e}') from e


def _source_flops(plan: Plan) -> tuple[float, str]:
  """Pretraining FLOPs of the growth source, from its run or its metadata."""
  if plan.source_run is not None:
    run = plan.source_run
    return flops.finetune_flops(run.arch, run.data.batch_size, run.num_steps,
                                flops.run_seq_len(run.arch, run.data)), ''
  meta = ckpt_lib.read_metadata(plan.source_dir)
  if not all(k in meta for k in ('steps', 'batch_size')):
    return 0.0, ' (given source: its pretraining is not counted)'
  small = growth_source.source_arch(plan.source_dir)
  seq = meta.get('block_size') if small.family == 'gpt2' else None
  return flops.finetune_flops(small, meta['batch_size'], meta['steps'],
                              seq), ''


def costs(plan: Plan) -> dict:
  """Each method's upfront FLOPs and the target's FLOPs per fine-tuning step
  (`compare_report.summarize`'s `costs`), and what shares the upfront cost."""
  run = plan.run
  step = flops.train_step_flops(run.arch, run.data.batch_size,
                                flops.run_seq_len(run.arch, run.data))
  out = {}
  source = None
  for name in plan.methods:
    if name in plan.ghn_runs:
      upfront = flops.ghn_training_flops(plan.ghn_runs[name][0])
      what = 'GHN training; one GHN serves every target it predicts'
    elif name in inits.GROWTH_METHODS:
      if source is None:
        source = _source_flops(plan)
      upfront, note = source
      what = ('source pretraining; one source serves every target grown '
              f'from it{note}')
      if name == 'ligo':
        ligo_run = plan.ligo_run
        upfront += ligo_run.num_steps * flops.ligo_step_flops(
            ligo_run.small, ligo_run.large, ligo_run.data.batch_size,
            flops.run_seq_len(ligo_run.large, ligo_run.data),
            ligo_run.sharing)
        what += f', plus {ligo_run.num_steps} operator steps (LiGO only)'
    else:
      upfront, what = 0.0, 'none'
    out[name] = {'upfront_flops': float(upfront), 'upfront': what,
                 'step_flops': float(step)}
  return out


def write_results(curves: dict, summary: dict, workdir: str) -> str:
  """compare.json, compare.md and compare.png; returns the Markdown table."""
  files.write_json(os.path.join(workdir, RESULT_JSON), summary, indent=2)
  table = compare_report.markdown(summary)
  files.write_text(os.path.join(workdir, RESULT_MD), table + '\n')
  compare_report.plot(curves, summary, os.path.join(workdir, RESULT_PNG))
  report.say(table, f'Curves: {os.path.join(workdir, RESULT_PNG)}')
  return table


def run_compare(config, workdir: str) -> dict:
  """Runs (or resumes) the whole comparison; returns the summary."""
  plan = _plan(config, workdir)
  run, methods, seeds = plan.run, plan.methods, plan.seeds
  os.makedirs(workdir, exist_ok=True)
  for name, (ghn_run, ghn_dir) in plan.ghn_runs.items():
    report.say(f'=== GHN of {name} ===')
    ghn_training.train(ghn_run, ghn_dir)
  if plan.source_run is not None:
    report.say(f'=== growth source {plan.source_run.arch.name} ===')
    finetuning.train(plan.source_run, os.path.dirname(plan.source_dir))
  if plan.ligo_run is not None:
    report.say('=== LiGO operator ===')
    ligo_training.train(plan.ligo_run, plan.ligo_dir)
  for name, method in methods.items():
    if method.deterministic:  # keep the prediction a user can restore
      method.prepare()
      init_save.save_init(method, run.arch, 0,
                          os.path.join(workdir, 'inits', name),
                          overwrite=True)
  runs = compared_runs.finetune_each(
      methods, seeds, config.finetune, workdir, config.compilation_cache)
  summary = compare_report.summarize(
      runs.curves, family=run.arch.family, num_steps=run.num_steps,
      baseline='random', costs=costs(plan),
      tests=runs.tests if run.eval.test_split else None,
      diverged=runs.diverged)
  summary.update(target=run.arch.name, data=config.finetune.data.name,
                 split=config.finetune.eval.split, seeds=seeds,
                 methods=list(methods),
                 describe={n: m.describe(run.arch)
                           for n, m in methods.items()})
  write_results(runs.curves, summary, workdir)
  return summary
