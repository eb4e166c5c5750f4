r"""`python -m rstg_jax.convert`: converts a Caffe2 checkpoint into an .npz for init_from.

  python -m rstg_jax.convert --src i3d_baseline_8x8_IN_pretrain_400k.pkl \
      --dst kinetics_i3d_r50.npz --arch i3d_r50 [--num_classes 174] [--skip 'pred_.*']
      [--stem caffe2|pyslowfast]

The converter itself is `rstg_jax.ssv1.convert` (Something-Something's ResNets); this is
its command line. Expected failures (an unsafe pickle, a blob that fits no parameter)
print one line and exit with status 1.
"""

import sys
from typing import Optional, Sequence

from absl import flags

from rstg_jax import cli
from rstg_jax.ssv1 import convert

PROG = 'python -m rstg_jax.convert'


def _define(fv) -> None:
  flags.DEFINE_string('src', None, 'Caffe2 pickle (.pkl)', flag_values=fv)
  flags.DEFINE_string('dst', None, 'output .npz', flag_values=fv)
  flags.DEFINE_enum('arch', None, ['i3d_r50', 'c2d_r50'], 'architecture', flag_values=fv)
  flags.DEFINE_integer('num_classes', None, 'target head size; a checkpoint head of another '
                       'size is left out (e.g. 174 for Something-Something-v1)',
                       flag_values=fv)
  flags.DEFINE_multi_string('skip', [], 'leave out Caffe2 blobs whose name fully matches '
                            'this regex (repeatable)', flag_values=fv)
  flags.DEFINE_enum('inflate', 'average', ['average', 'center'],
                    'how 2D (ImageNet) kernels are inflated to 3D', flag_values=fv)
  flags.DEFINE_enum('stem', None, sorted(convert.STEMS),
                    'the pool1 convention the weights were trained with (default: from '
                    "the source format; a Caffe2 pickle is 'caffe2', no padding); "
                    "'pyslowfast' for weights trained in PySlowFast (padding 1)",
                    flag_values=fv)
  flags.DEFINE_bool('check', True, 'check the shapes against the ResNet3D the file '
                    'describes (--nocheck skips it)', flag_values=fv)
  flags.mark_flags_as_required(['src', 'dst', 'arch'], flag_values=fv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Converts, checks and writes; prints what was skipped, dropped or inflated."""
  args, _ = cli.parse_command(_define, list(sys.argv[1:] if argv is None else argv), PROG)
  flat, meta = convert.convert(args.src, args.arch, skip=args.skip,
                               num_classes=args.num_classes, inflate_mode=args.inflate,
                               stem=args.stem)
  if args.check:
    convert.check_against_model(flat, meta)
  convert.save_converted(args.dst, flat, meta)
  n = sum(v.size for k, v in flat.items() if k.startswith('params/'))
  print(f'wrote {args.dst}: {len(flat)} tensors, {n:,} parameters; arch {meta["arch"]}, '
        f'blocks {meta["blocks"]}, non-local {meta["nonlocal_stages"] or "none"}, '
        f'head {meta["num_classes"]}')
  if meta['blocks'] != [3, 4, 6, 3]:
    print(f'note: blocks {meta["blocks"]} is not ResNet-50\'s [3, 4, 6, 3]')
  for s in meta['skipped']:
    print(f'skipped {s["name"]} {s["shape"]}: {s["reason"]}')
  if meta['dropped']:
    print(f'dropped {len(meta["dropped"])} solver entries (momentum, model_iter, lr)')
  if meta['inflated']:
    print(f'inflated {len(meta["inflated"])} 2D kernels ({args.inflate})')
  if meta['affine_only_bn']:
    print(f'{len(meta["affine_only_bn"])} BN layers had no statistics: mean 0, var 1 - eps')
  # The model here is the one the configs build by default (config.backbone.stem).
  line, differs = convert.stem_report(meta, convert.ResNet3D.stem,
                                      'the default model (--config.backbone.stem)')
  print(f'WARNING: {line}' if differs else line, file=sys.stderr if differs else sys.stdout)
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except (convert.ConversionError, convert.MergeError, convert.UnsafePickleError,
          OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
