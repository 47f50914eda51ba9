"""Step-0 validation metrics of each fill on ViTs wider than the GHN trained.

For a GHN trained on ViTs (e.g. by the main job), predicts ViTs of 1x-4x its
trained width at a given depth with every fill of `ghn.FILLS` and prints the
validation loss and accuracy of each prediction, beside random init. No
training: this isolates what each fill gives at step 0.

    .venv/bin/python benchmarks/fill_step0.py --ghn /tmp/logah_demo
"""

import argparse
import dataclasses

import jax

from logah_jax import host_memory
from logah_jax import arch, ghn, models
from logah_jax.data import datasets
from logah_jax.train import evaluate


def main():
  host_memory.reexec_with_tunables()  # the malloc settings of the entry point
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ghn', required=True, help='a GHN training workdir')
  parser.add_argument('--multiples', default='1,1.5,2,3,4')
  parser.add_argument('--depth', type=int, default=8)
  parser.add_argument('--patch', type=int, default=7)
  parser.add_argument('--head-size', type=int, default=16)
  parser.add_argument('--examples', type=int, default=1000)
  args = parser.parse_args()
  trained = ghn.load(args.ghn)
  space = trained.run_config['space']
  source = datasets.get_dataset(trained.run_config['data']['name'],
                                'validation')
  width0 = trained.cfg.trained_width
  print(f'GHN trained up to width {width0}; depth-{args.depth} targets, '
        f'{args.examples} validation examples; loss / accuracy at step 0')
  print('| width | random | ' + ' | '.join(ghn.FILLS) + ' |')
  print('|---' * (len(ghn.FILLS) + 2) + '|')
  for m in (float(v) for v in args.multiples.split(',')):
    width = round(m * width0 / args.head_size) * args.head_size
    target = arch.ViTConfig(
        depth=args.depth, width=width, heads=width // args.head_size,
        mlp_dim=4 * width, patch=args.patch, image_size=space['image_size'],
        channels=space['channels'], num_classes=space['num_classes'])
    score = lambda p: evaluate.evaluate(target, p, source, batch_size=500,
                                        max_batches=args.examples // 500)
    cells = [score(models.init_params(target, jax.random.key(0)))]
    for fill in ghn.FILLS:
      cfg = dataclasses.replace(trained.cfg, fill=fill)
      cells.append(score(ghn.predict(cfg, trained.params, target)))
    print(f'| {width} ({width / width0:.3g}x) | ' + ' | '.join(
        f"{c['loss']:.2f} / {100 * c['accuracy']:.1f}%" for c in cells)
          + ' |', flush=True)


if __name__ == '__main__':
  main()
