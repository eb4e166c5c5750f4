"""Caffe2 checkpoints of the Non-local repo, read and mapped name by name onto ResNet3D.

The Kinetics-400 C2D / I3D ResNet-50 checkpoints of the Non-local repo (also served by
the PySlowFast model zoo) are Caffe2 pickles: `pickle.load(f, encoding='latin1')['blobs']`,
a dict of numpy arrays named

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

This module holds the names: reading the pickle (`read_caffe2_pickle`), the rules from
blob names to variable paths (`caffe2_to_flax`) and the network's shape read back off
those paths (`infer_structure`). `rstg_jax.ssv1.convert` builds the converted file and
merges it into a model.

A pickle can run arbitrary code when loaded, or hand numpy a forged array state that
crashes the process, so `read_caffe2_pickle` reads it with `rstg_jax.safe_pickle`, which
rebuilds plain numeric arrays itself and refuses everything else with a one-line error.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from rstg_jax import errors
from rstg_jax import safe_pickle
from rstg_jax.ssv1.resnet3d import temporal_kernel

BN_EPS = 1e-5

# Caffe2 solver state saved next to the weights; never part of the model.
_SOLVER_JUNK = re.compile(r'.*_momentum|model_iter|lr')

ARCHS = {'i3d_r50': 'i3d', 'c2d_r50': 'c2d', 'i3d': 'i3d', 'c2d': 'c2d'}


class ConversionError(errors.DataError):
  """A blob could not be mapped onto the model (unknown name, unexpected shape)."""


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
  arch = canonical_arch(arch)
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

  affine_only = _fill_affine_only_bn(flat)
  for key, value in flat.items():
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
      flat[key] = value.astype(np.float32)
  return flat, {'sources': sources, 'inflated': sorted(inflated),
                'affine_only_bn': sorted(affine_only)}


def _fill_affine_only_bn(flat: dict[str, np.ndarray]) -> list[str]:
  """Gives BN layers that came without statistics mean 0 and variance 1 - eps, in place.

  Detectron-style AffineChannel BN: y = x * s + b is BN with mean 0, var 1 - eps.

  Returns:
    The module paths of those layers.
  """
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
  return affine_only


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


def canonical_arch(arch: str) -> str:
  """'i3d' or 'c2d' for an arch name of the command ('i3d_r50', ...) or of the model."""
  try:
    return ARCHS[arch]
  except KeyError:
    raise ValueError(f'arch must be one of {sorted(ARCHS)}, got {arch!r}') from None
