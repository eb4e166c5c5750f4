"""Imports Kinetics-400 C2D / I3D ResNet-50 checkpoints (Caffe2 pickles) into ResNet3D.

The paper's Something-Something backbones start from the Kinetics-400 models of the
Non-local repo (also served by the PySlowFast model zoo). Those are Caffe2 pickles:
`pickle.load(f, encoding='latin1')['blobs']`, a dict of numpy arrays named

    conv1_w                                  [64, 3, t, 7, 7]
    res_conv1_bn_{s,b,rm,riv}                [64]
    res{2..5}_{i}_branch2{a,b,c}_w           [out, in, t, h, w]
    res{2..5}_{i}_branch2{a,b,c}_bn_{s,b,rm,riv}
    res{k}_0_branch1_w, res{k}_0_branch1_bn_{s,b,rm,riv}     (shortcut)
    nonlocal_conv{k}_{i}_{theta,phi,g,out}_{w,b}, nonlocal_conv{k}_{i}_bn_{s,b,rm,riv}
    pred_w [400, 2048], pred_b [400]
    *_momentum, model_iter, lr                 (solver state: dropped)

`s` is the BN scale, `b` its bias, `rm` the running mean and `riv` the running variance
(despite the name). They map onto `rstg_jax.ssv1.resnet3d.ResNet3D`, whose module
names mirror these: conv weights [out, in, t, h, w] become flax kernels [t, h, w, in, out].

ImageNet ResNet-50 weights in the same Caffe2 naming with 2D kernels [out, in, h, w]
(the format of the Non-local repo's and Detectron's ImageNet R-50 pickles) are inflated to
the arch's temporal kernels (`inflate`); BN given as scale and bias only (Detectron's
AffineChannel) gets mean 0 and variance 1 - eps, i.e. the same affine map.

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

A pickle can run arbitrary code when loaded, or hand numpy a forged array state that
crashes the process, so `read_caffe2_pickle` reads it with `rstg_jax.safe_pickle`, which
rebuilds plain numeric arrays itself and refuses everything else with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rstg_jax import errors
from rstg_jax import safe_pickle
from rstg_jax.ssv1.resnet3d import STEMS, ResNet3D, temporal_kernel
from rstg_jax.train import init_from

FORMAT = 'rstg_jax.convert/1'
META_KEY = '__meta__'
BN_EPS = 1e-5

# The Kinetics classifier does not fit a Something-Something head: by default the
# checkpoint's `pred_*` blobs are skipped and the model's `pred` stays at its init.
DEFAULT_SKIP = ('pred_.*',)
DEFAULT_DONT_LOAD = ('(params|batch_stats)/pred/.*',)

# Caffe2 solver state saved next to the weights; never part of the model.
_SOLVER_JUNK = re.compile(r'.*_momentum|model_iter|lr')

ARCHS = {'i3d_r50': 'i3d', 'c2d_r50': 'c2d', 'i3d': 'i3d', 'c2d': 'c2d'}


# Refusals of `read_caffe2_pickle` (one line naming the file); see rstg_jax.safe_pickle.
UnsafePickleError = safe_pickle.UnsafePickleError


class ConversionError(errors.DataError):
  """A blob could not be mapped onto the model (unknown name, unexpected shape)."""

# The stem each source format's weights were trained with: a Caffe2 pickle is the
# Caffe2 Non-local code's model, whose pool1 has no padding.
SOURCE_FORMAT = 'caffe2_pickle'
SOURCE_STEM = {SOURCE_FORMAT: 'caffe2'}


MergeError = init_from.MergeError


# ----------------------------------------------------------------------------- reading


def read_caffe2_pickle(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """Reads the weight blobs of a Caffe2 pickle.

  Returns:
    (blobs, dropped): name -> array for the model's tensors, and the sorted names of
    the solver entries (`*_momentum`, `model_iter`, `lr`) that were dropped.
  """
  obj = safe_pickle.load_file(path)
  if isinstance(obj, Mapping) and 'blobs' in obj:
    obj = obj['blobs']
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a dict of blobs (or {{'blobs': ...}}), "
                          f'got {type(obj).__name__}')
  blobs, dropped = {}, []
  for name, value in obj.items():
    name = name.decode('latin1') if isinstance(name, bytes) else str(name)
    if _SOLVER_JUNK.fullmatch(name):
      dropped.append(name)
      continue
    if not isinstance(value, np.ndarray):
      raise ConversionError(f'{path}: blob {name!r} is a {type(value).__name__}, '
                            'not an array')
    blobs[name] = value
  return blobs, sorted(dropped)


# ----------------------------------------------------------------------------- mapping


def inflate(kernel2d: np.ndarray, t: int, mode: str = 'average') -> np.ndarray:
  """Inflates a 2D conv kernel [h, w, in, out] to a 3D one [t, h, w, in, out].

  Both modes give a 3D conv whose response to a video that is constant in time equals
  the 2D conv's response to one frame (away from temporal zero padding):
    'center':  the 2D kernel at the middle temporal index t // 2, zeros elsewhere;
    'average': the 2D kernel repeated t times and divided by t (I3D's "bootstrapping",
               Carreira & Zisserman 2017).
  """
  kernel2d = np.asarray(kernel2d)
  if kernel2d.ndim != 4:
    raise ValueError(f'expected a 2D kernel [h, w, in, out], got shape {kernel2d.shape}')
  if t < 1:
    raise ValueError(f'temporal size must be >= 1, got {t}')
  if mode == 'center':
    out = np.zeros((t,) + kernel2d.shape, kernel2d.dtype)
    out[t // 2] = kernel2d
    return out
  if mode == 'average':
    return np.repeat(kernel2d[None], t, axis=0) / np.asarray(t, kernel2d.dtype)
  raise ValueError(f"inflation mode must be 'center' or 'average', got {mode!r}")


_BN_FIELD = {'s': ('params', 'scale'), 'b': ('params', 'bias'),
             'rm': ('batch_stats', 'mean'), 'riv': ('batch_stats', 'var')}

_RE_CONV1 = re.compile(r'conv1_w')
_RE_CONV1_BN = re.compile(r'res_conv1_bn_(s|b|rm|riv)')
_RE_RES_CONV = re.compile(r'(res([2-5])_(\d+))_(branch2[abc]|branch1)_w')
_RE_RES_BN = re.compile(r'(res[2-5]_\d+)_(branch2[abc]|branch1)_bn_(s|b|rm|riv)')
_RE_NL_CONV = re.compile(r'(nonlocal_conv[2-5]_\d+)_(theta|phi|g|out)_(w|b)')
_RE_NL_BN = re.compile(r'(nonlocal_conv[2-5]_\d+)_bn_(s|b|rm|riv)')
_RE_PRED = re.compile(r'pred_(w|b)')


def _conv_kernel(name: str, w: np.ndarray, kt: int, mode: str,
                 inflated: list[str]) -> np.ndarray:
  """Caffe2 [out, in, (t,) h, w] -> flax [t, h, w, in, out], inflating 2D kernels."""
  if w.ndim == 5:
    return np.transpose(w, (2, 3, 4, 1, 0))
  if w.ndim == 4:
    inflated.append(name)
    return inflate(np.transpose(w, (2, 3, 1, 0)), kt, mode)
  raise ConversionError(f'{name}: conv weight must be 4D or 5D, got shape {w.shape}')


def caffe2_to_flax(blobs: Mapping[str, np.ndarray], arch: str, inflate_mode: str = 'average'
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Maps Caffe2 blobs onto ResNet3D variable paths.

  Args:
    blobs: name -> array (solver entries already dropped).
    arch: 'i3d' or 'c2d' (or 'i3d_r50' / 'c2d_r50'): picks the temporal kernel sizes
      that 2D (ImageNet) kernels are inflated to.
    inflate_mode: 'average' or 'center', for 2D kernels only.

  Returns:
    (flat, info): '/'-joined path -> array, and a dict with 'sources' (path -> Caffe2
    name), 'inflated' and 'affine_only_bn' (names of BN layers given without
    statistics).

  Raises:
    ConversionError: for a blob whose name fits no rule (strict: nothing is ignored).
  """
  arch = _arch(arch)
  flat, sources, inflated, unknown = {}, {}, [], []

  def put(path, value, name):
    key = '/'.join(path)
    if key in flat:
      raise ConversionError(f'{name} and {sources[key]} both map to {key}')
    flat[key], sources[key] = np.asarray(value), name

  def put_bn(module_path, field, value, name):
    collection, leaf = _BN_FIELD[field]
    put((collection,) + module_path + (leaf,), value, name)

  for name, w in sorted(blobs.items()):
    if _RE_CONV1.fullmatch(name):
      kt = temporal_kernel(arch, 'conv1', 0)
      put(('params', 'conv1', 'kernel'), _conv_kernel(name, w, kt, inflate_mode,
                                                      inflated), name)
    elif m := _RE_CONV1_BN.fullmatch(name):
      put_bn(('res_conv1_bn',), m[1], w, name)
    elif m := _RE_RES_CONV.fullmatch(name):
      block, stage, idx, branch = m[1], f'res{m[2]}', int(m[3]), m[4]
      kt = temporal_kernel(arch, stage, idx) if branch == 'branch2a' else 1
      put(('params', block, branch, 'kernel'),
          _conv_kernel(name, w, kt, inflate_mode, inflated), name)
    elif m := _RE_RES_BN.fullmatch(name):
      put_bn((m[1], f'{m[2]}_bn'), m[3], w, name)
    elif m := _RE_NL_CONV.fullmatch(name):
      if m[3] == 'w':
        put(('params', m[1], m[2], 'kernel'),
            _conv_kernel(name, w, 1, inflate_mode, inflated), name)
      else:
        put(('params', m[1], m[2], 'bias'), w, name)
    elif m := _RE_NL_BN.fullmatch(name):
      put_bn((m[1], 'bn'), m[2], w, name)
    elif m := _RE_PRED.fullmatch(name):
      if m[1] == 'w':
        if w.ndim != 2:
          raise ConversionError(f'{name}: expected [classes, features], '
                                f'got shape {w.shape}')
        put(('params', 'pred', 'kernel'), w.T, name)
      else:
        put(('params', 'pred', 'bias'), w, name)
    else:
      unknown.append(name)
  if unknown:
    raise ConversionError(
        f'{len(unknown)} blob(s) fit no ResNet3D name: {unknown[:20]}; drop them with '
        '--skip PATTERN if they are not part of the model')

  # Detectron-style AffineChannel BN: y = x * s + b is BN with mean 0, var 1 - eps.
  affine_only = []
  for key in list(flat):
    if key.startswith('params/') and key.endswith('/scale'):
      module = key[len('params/'):-len('/scale')]
      mean_key, var_key = f'batch_stats/{module}/mean', f'batch_stats/{module}/var'
      if mean_key not in flat and var_key not in flat:
        c = flat[key].shape[0]
        flat[mean_key] = np.zeros((c,), np.float32)
        flat[var_key] = np.full((c,), 1.0 - BN_EPS, np.float32)
        affine_only.append(module)
  for key, value in flat.items():
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
      flat[key] = value.astype(np.float32)
  return flat, {'sources': sources, 'inflated': sorted(inflated),
                'affine_only_bn': sorted(affine_only)}


def infer_structure(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Reads the network's shape off converted variable paths: blocks per stage,
  non-local positions, base width and the classifier size (None if absent)."""
  blocks = [0, 0, 0, 0]
  nonlocal_stages: dict[str, list[int]] = {}
  for key in flat:
    parts = key.split('/')
    if m := re.fullmatch(r'res([2-5])_(\d+)', parts[1]):
      s = int(m[1]) - 2
      blocks[s] = max(blocks[s], int(m[2]) + 1)
    elif m := re.fullmatch(r'nonlocal_conv([2-5])_(\d+)', parts[1]):
      idx = nonlocal_stages.setdefault(f'res{m[1]}', [])
      if int(m[2]) not in idx:
        idx.append(int(m[2]))
  conv1 = flat.get('params/conv1/kernel')
  pred = flat.get('params/pred/kernel')
  return {'blocks': blocks,
          'nonlocal_stages': {k: sorted(v) for k, v in sorted(nonlocal_stages.items())},
          'base_width': int(conv1.shape[-1]) if conv1 is not None else None,
          'num_classes': int(pred.shape[-1]) if pred is not None else None}


def _arch(arch: str) -> str:
  try:
    return ARCHS[arch]
  except KeyError:
    raise ValueError(f'arch must be one of {sorted(ARCHS)}, got {arch!r}') from None


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
          'arch': _arch(arch), 'inflate_mode': inflate_mode if info['inflated'] else None,
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
