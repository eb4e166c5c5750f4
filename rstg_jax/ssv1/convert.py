"""Imports Kinetics-400 C2D / I3D ResNet-50 checkpoints (Caffe2 pickles) into ResNet3D.

The paper's Something-Something backbones start from the Kinetics-400 models of the
Non-local repo (also served by the PySlowFast model zoo). Those are Caffe2 pickles whose
blob names `rstg_jax.ssv1.caffe2` reads and maps onto `rstg_jax.ssv1.resnet3d.ResNet3D`
(2D ImageNet kernels inflated, BN without statistics completed); this module makes the
converted file of them and merges it, strictly, into a model's variables.

Command:

    python -m rstg_jax.convert --src i3d_baseline_8x8_IN_pretrain_400k.pkl \\
        --dst i3d_r50_k400.npz --arch i3d_r50 [--num_classes 174] [--skip 'pred_.*']
        [--stem caffe2|pyslowfast]

writes an .npz whose keys are '/'-joined variable paths ('params/res2_0/branch2a/kernel',
'batch_stats/res2_0/branch2a_bn/mean', ...) plus '__meta__' (JSON: source file and hash,
arch, stem, skipped and dropped blobs, the Caffe2 name of every tensor). A trainer reads
it with `load_converted` and fills its initial variables with `merge_pretrained`, which is
strict like big_vision's loader: every checkpoint tensor is used or skipped by a pattern,
every model variable is filled or named by a `dont_load` pattern, and shapes must agree.

In a trainer (the graph blocks and the new 174-way head keep their init values):

    variables = model.init(rng, dummy_clip)
    variables, report = merge_pretrained(
        variables, load_converted('i3d_r50_k400.npz'),
        dont_load=DEFAULT_DONT_LOAD + ('params/res[34]_graph/.*',))

Pass real initial variables: with `jax.eval_shape` ones, the variables kept at init
stay `ShapeDtypeStruct`s (which is what the command's own shape check uses).

The weights alone do not fix the network: pool1's padding is not a parameter, and the
same tensors compute different features with the Caffe2 stem (no padding) and the
PySlowFast one (padding 1; see `resnet3d.STEMS`). The metadata's 'stem' records the one
the checkpoint was trained with, from the source format: a Caffe2 pickle (what this
reads) comes from the Caffe2 Non-local code, 'caffe2'; `--stem pyslowfast` says
otherwise for weights trained in PySlowFast and saved under Caffe2 names. The command
and the trainer's `init_from` report it next to the model's stem (`stem_report`) and warn
when the two differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rstg_jax import safe_pickle
from rstg_jax.ssv1 import caffe2
from rstg_jax.ssv1.caffe2 import (caffe2_to_flax, canonical_arch, infer_structure,
                                  read_caffe2_pickle)
from rstg_jax.ssv1.resnet3d import STEMS, ResNet3D
from rstg_jax.train import init_from

FORMAT = 'rstg_jax.convert/1'
META_KEY = '__meta__'

# The Kinetics classifier does not fit a Something-Something head: by default the
# checkpoint's `pred_*` blobs are skipped and the model's `pred` stays at its init.
DEFAULT_SKIP = ('pred_.*',)
DEFAULT_DONT_LOAD = ('(params|batch_stats)/pred/.*',)

# What `convert` raises for its callers: a blob that fits no ResNet3D name, and the
# refusals of `read_caffe2_pickle` (one line naming the file; see rstg_jax.safe_pickle).
ConversionError = caffe2.ConversionError
UnsafePickleError = safe_pickle.UnsafePickleError

# The stem each source format's weights were trained with: a Caffe2 pickle is the
# Caffe2 Non-local code's model, whose pool1 has no padding.
SOURCE_FORMAT = 'caffe2_pickle'
SOURCE_STEM = {SOURCE_FORMAT: 'caffe2'}


MergeError = init_from.MergeError


_matches = init_from.matches


def convert(src: str, arch: str, skip: Sequence[str] = (), num_classes: Optional[int] = None,
            inflate_mode: str = 'average', stem: Optional[str] = None
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Converts a Caffe2 pickle into flat ResNet3D variables plus metadata.

  Args:
    src: path of the pickle.
    arch: 'i3d_r50' or 'c2d_r50' (or 'i3d' / 'c2d').
    skip: regexes (full match) over Caffe2 blob names to leave out, e.g. 'pred_.*'.
    num_classes: the target head size; if the checkpoint's `pred` has another size it
      is left out (and listed in the metadata's `skipped` with the reason).
    inflate_mode: how 2D kernels become 3D ('average' or 'center').
    stem: the pool1 convention the weights were trained with ('caffe2' or
      'pyslowfast'); None takes it from the source format (a Caffe2 pickle: 'caffe2').
  """
  if stem is not None and stem not in STEMS:
    raise ValueError(f'stem must be one of {sorted(STEMS)}, got {stem!r}')
  blobs, dropped = read_caffe2_pickle(src)
  skipped = []
  for name in sorted(blobs):
    if p := _matches(skip, name):
      skipped.append({'name': name, 'shape': list(blobs[name].shape),
                      'reason': f'--skip {p}'})
      del blobs[name]
  pred_w = blobs.get('pred_w')
  if num_classes is not None and pred_w is not None and pred_w.shape[0] != num_classes:
    for name in ('pred_w', 'pred_b'):
      if name in blobs:
        skipped.append({'name': name, 'shape': list(blobs[name].shape),
                        'reason': f'{pred_w.shape[0]} classes, not '
                                  f'--num_classes {num_classes}'})
        del blobs[name]
  flat, info = caffe2_to_flax(blobs, arch, inflate_mode)
  with open(src, 'rb') as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
  meta = {'format': FORMAT, 'source': os.path.abspath(src), 'source_sha256': sha256,
          'arch': canonical_arch(arch), 'inflate_mode': inflate_mode if info['inflated'] else None,
          'source_format': SOURCE_FORMAT, 'stem': stem or SOURCE_STEM[SOURCE_FORMAT],
          'stem_from': '--stem' if stem else 'source format',
          'skipped': skipped, 'dropped': dropped, **info, **infer_structure(flat)}
  return flat, meta


def checkpoint_stem(meta: Mapping[str, Any]) -> Optional[str]:
  """The stem a converted checkpoint was trained with; None if its metadata cannot
  tell. Files this module wrote before 'stem' was recorded came from Caffe2 pickles."""
  if meta.get('stem'):
    return meta['stem']
  if meta.get('format') == FORMAT:
    return SOURCE_STEM[SOURCE_FORMAT]
  return None


def stem_report(meta: Mapping[str, Any], model_stem: str, model: str = 'the model'
                ) -> tuple[str, bool]:
  """One line on the checkpoint's stem and the model's, and whether they differ
  (then the caller warns).

  A mismatch leaves every shape from res3 on the same (so loading succeeds) but shifts
  every pool1 window by one pixel against the grid the weights were trained on.
  """
  ckpt = checkpoint_stem(meta)
  model = f"{model} uses '{model_stem}' (pool1 padding {STEMS[model_stem]})"
  if ckpt is None:
    return (f'stem: the checkpoint does not record which stem it was trained with; '
            f'{model}', False)
  line = (f"stem: the checkpoint was trained with '{ckpt}' (pool1 padding {STEMS[ckpt]}, "
          f"from {meta.get('stem_from', 'source format')}), {model}")
  if ckpt == model_stem:
    return line, False
  return (f'{line}: pooling windows are shifted by a pixel against the grid the weights '
          f"were trained on, so the network is not the checkpoint's; set "
          f'--config.backbone.stem={ckpt} unless this is intended'), True


# ------------------------------------------------------------------------ saving/loading


def save_converted(path: str, flat: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
  """Writes flat variables and metadata to an .npz (no pickles inside)."""
  arrays = {k: np.asarray(v) for k, v in flat.items()}
  arrays[META_KEY] = np.asarray(json.dumps(meta, sort_keys=True))
  # Write to a temporary name first so an interrupted run leaves no truncated file.
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


_unflatten = init_from.unflatten


_flatten = init_from.flatten


def load_converted(path: str) -> tuple[dict, dict, dict]:
  """Reads a file written by `save_converted`.

  Returns:
    (params, batch_stats, meta): nested dicts of numpy arrays, and the metadata.
  """
  with np.load(path, allow_pickle=False) as z:
    flat = {k: z[k] for k in z.files}
  meta = json.loads(str(flat.pop(META_KEY))) if META_KEY in flat else {}
  tree = _unflatten(flat)
  unknown = set(tree) - {'params', 'batch_stats'}
  if unknown:
    raise ValueError(f'{path}: unexpected collections {sorted(unknown)}')
  return tree.get('params', {}), tree.get('batch_stats', {}), meta


def merge_pretrained(init_variables: Mapping[str, Any], loaded: Any,
                     dont_load: Sequence[str] = DEFAULT_DONT_LOAD,
                     skip: Sequence[str] = DEFAULT_SKIP) -> tuple[dict, dict]:
  """Fills a model's initial variables with converted weights, strictly.

  Args:
    init_variables: the model's variables from `init` (or `jax.eval_shape` of it),
      e.g. {'params': ..., 'batch_stats': ...}; other collections pass through.
    loaded: `load_converted`'s (params, batch_stats, meta), or a dict with 'params',
      'batch_stats' and optionally 'meta'.
    dont_load: regexes (full match) over model paths such as
      'params/res4_graph/.*' whose variables keep their init values: the new graph
      blocks, the new head. Checkpoint tensors for such paths are left out. Passing
      this replaces the default (the head, `DEFAULT_DONT_LOAD`).
    skip: regexes (full match) over checkpoint tensors, matched against both the
      variable path and the Caffe2 name from the metadata (default: the Kinetics
      classifier 'pred_.*').

  Returns:
    (variables, report): nested dicts with every loaded tensor in place (as the
    model's dtype), and a report with the sorted lists 'loaded', 'skipped'
    (checkpoint tensors left out, with the pattern) and 'kept_at_init'.

  Raises:
    MergeError: listing every checkpoint tensor that is neither used nor skipped,
      every model variable neither filled nor covered by `dont_load`, and every shape
      mismatch (path, Caffe2 name, checkpoint shape, model shape).
  """
  if isinstance(loaded, tuple):
    params, batch_stats, meta = loaded
    loaded = {'params': params, 'batch_stats': batch_stats, 'meta': meta}
  meta = loaded.get('meta') or {}
  return init_from.merge_params(
      _to_dict(init_variables), {k: v for k, v in loaded.items() if k != 'meta'},
      dont_load=dont_load, skip=skip, sources=meta.get('sources', {}))


def _to_dict(tree: Any) -> Any:
  # FrozenDicts (and other Mappings) become plain dicts so the result is mutable.
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def check_against_model(flat: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
  """Merges converted variables into the shapes of the ResNet3D they describe (via
  `jax.eval_shape`, so nothing is computed); raises MergeError if anything is off."""
  model = ResNet3D(num_classes=meta['num_classes'] or 0, arch=meta['arch'],
                   blocks=tuple(meta['blocks']), base_width=meta['base_width'],
                   nonlocal_stages={k: tuple(v) for k, v in
                                    meta['nonlocal_stages'].items()})
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 8, 64, 64, 3))))
  loaded = {**_unflatten(flat), 'meta': meta}
  try:
    _, report = merge_pretrained(shapes, loaded, dont_load=(), skip=())
  except MergeError as e:
    raise MergeError(
        f"{e}\n(checked against ResNet3D(arch={meta['arch']!r}, blocks="
        f"{tuple(meta['blocks'])}); temporal sizes that differ in conv1 and branch2a "
        'kernels mean the checkpoint is of the other --arch)') from None
  return report
