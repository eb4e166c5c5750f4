"""The SyncMNIST task: what the trainer gets for `config.data.name == 'syncmnist'`.

Model: `rstg_jax.syncmnist.models.create_model` (RSTG or a baseline). Data: videos
generated on the fly (`rstg_jax.syncmnist.dataset`). Pre-trained weights: the backbone
pre-trained on single digits when `backbone.pretrain_steps > 0` (cached in
`WORKDIR/backbone.npz`), then `init_from.path` (another run). Frozen: the backbone when
`backbone.freeze`. Splits: training evaluates and selects on the first `data.val_size`
videos of 'val' (videos of the last 10,000 MNIST training digits, which neither the
training stream nor the backbone pre-training reads); the first `eval.size` videos of
'test' are evaluated once at the end of training, and by the evaluate command together
with the digit-oracle diagnostic (`DigitOracleView`). No TensorFlow anywhere on this path.
"""

import os

import jax

from rstg_jax import errors
from rstg_jax.syncmnist import models
from rstg_jax.train import config_checks
from rstg_jax.train import evaluators
from rstg_jax.train import init_from
from rstg_jax.train import task as task_lib
from rstg_jax.train.state import param_count


class SyncMNISTTask(task_lib.Task):
  """See the module docstring."""

  name = 'syncmnist'
  selection_split = 'val'
  test_split = 'test'

  def config_errors(self, config) -> list[str]:
    b = config.backbone
    errors = models.config_errors(config) + data_config_errors(config)
    from rstg_jax.syncmnist import pretrain  # pylint: disable=g-import-not-at-top
    if b.pretrain_target not in pretrain.TARGETS:
      errors.append(f'Unknown backbone.pretrain_target {b.pretrain_target!r}. Valid: '
                    f'{", ".join(pretrain.TARGETS)}.')
    elif b.pretrain_target == 'digit_motion':
      if b.get('frames', 1) != 2:
        errors.append("backbone.pretrain_target 'digit_motion' needs a backbone that sees "
                      'two frames: set backbone.frames = 2.')
      errors += config_checks.positive_errors(
          ('backbone.pretrain_motion_steps', b.get('pretrain_motion_steps'),
           "a positive integer (the 'digit_motion' stage)", dict(integer=True)),
          ('backbone.pretrain_scene_steps', b.get('pretrain_scene_steps', 0),
           "an integer >= 0 (the 'digit_motion' target's scene stage)",
           dict(integer=True, allow_zero=True)))
    elif b.get('pretrain_scene_steps', 0):
      errors.append('backbone.pretrain_scene_steps > 0 needs backbone.pretrain_target '
                    "'digit_motion' (the scene stage starts from its backbone).")
    errors += config_checks.positive_errors(
        ('backbone.pretrain_steps', b.pretrain_steps, 'an integer >= 0',
         dict(integer=True, allow_zero=True)),
        # The training stream is drawn from the first data.train_size videos.
        ('data.train_size', config.data.train_size, 'a positive integer (the training videos)',
         dict(integer=True)))
    if isinstance(b.pretrain_steps, int) and b.pretrain_steps > 0:
      errors += config_checks.positive_errors(
          ('backbone.pretrain_lr', b.pretrain_lr, 'a positive finite number'),
          ('backbone.pretrain_batch_size', b.pretrain_batch_size, 'a positive integer',
           dict(integer=True)))
    return errors

  def check_data(self, config) -> None:
    """Loads the MNIST digits (cached for the run): a missing copy (`MNISTNotFoundError`),
    a refused pickle (`UnsafePickleError`), a file that cannot be read or does not hold
    MNIST stops the run with a `DataError` before anything is created."""
    from rstg_jax.syncmnist import mnist  # pylint: disable=g-import-not-at-top  # numpy only
    try:
      mnist.load_mnist('train', config.data.mnist_path)
    except errors.RSTGError:
      raise
    except (OSError, ValueError) as e:  # the loaders' unreadable / not-MNIST content
      raise errors.DataError(f'MNIST (config.data.mnist_path='
                             f'{config.data.mnist_path!r}): {e}') from None

  def create_model(self, config):
    return models.create_model(config)

  def create_dataset(self, config, process_index: int = 0, process_count: int = 1):
    from rstg_jax.syncmnist.dataset import SyncMNISTDataset  # pylint: disable=g-import-not-at-top
    from rstg_jax.syncmnist.generator import NO_PAIR_PROB  # pylint: disable=g-import-not-at-top
    d = config.data
    return SyncMNISTDataset(
        num_digits=d.num_digits, data_seed=d.seed, mnist_path=d.mnist_path,
        train_size=d.train_size, batch_size=config.batch_size, seed=config.seed,
        eval_size=config.eval.size, eval_batch_size=config.eval.batch_size,
        val_size=d.val_size, motion=d.motion,
        # Runs saved before the field existed used the paper's probability.
        no_pair_prob=d.get('no_pair_prob', NO_PAIR_PROB),
        process_index=process_index, process_count=process_count)

  def frozen_mask(self, config, params):
    if not config.backbone.freeze:
      return None
    if 'backbone' not in params:
      raise errors.ConfigError('config.backbone.freeze is set but the model has no '
                               f'`backbone` submodule (top-level params: {sorted(params)}).')
    return {k: jax.tree.map(lambda _, k=k: k == 'backbone', v) for k, v in params.items()}

  def load_pretrained(self, config, workdir: str, variables: dict, say) -> dict:
    if config.backbone.pretrain_steps > 0:
      variables = dict(variables, params=pretrained_backbone(
          config, workdir, variables['params'], say))
    return super().load_pretrained(config, workdir, variables, say)

  def describe_model(self, config, params) -> str:
    ablation = f', ablation {config.ablation}' if config.model == 'rstg' else ''
    return (f'{type(models.create_model(config)).__name__} ({config.model}{ablation}): '
            f'{param_count(params):,} parameters')

  def evaluator(self, config, dataset, final: bool = False):
    if final:
      return DigitOracleView(batches=dataset.test_batches, split=self.test_split)
    return evaluators.SingleView(split=self.selection_split)


def _range_error(name: str, value, lo: int, hi: int, what: str):
  if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
    return f'{name}={value!r} must be an integer in {lo}..{hi} ({what}).'
  return None


def data_config_errors(config) -> list[str]:
  """Every data field the generator would reject: data.motion, data.num_digits,
  data.seed, the split sizes (data.train_size, data.val_size, eval.size),
  data.num_classes and data.no_pair_prob."""
  from rstg_jax.syncmnist import generator  # pylint: disable=g-import-not-at-top
  d, sizes = config.data, generator.SPLIT_SIZES
  errors = [e for e in (
      _range_error('data.num_digits', d.num_digits, 2, generator.MAX_DIGITS,
                   'digits per video, of distinct classes; the paper: 3 or 5'),
      _range_error('data.seed', d.seed, 0, 2**63 - 1, 'the generator seed'),
  ) if e]
  # (> 0 is the trainer's check; here: at most the generator's split.)
  for name, value, split in (('data.train_size', d.train_size, 'train'),
                             ('eval.size', config.eval.size, 'test')):
    if isinstance(value, int) and value > sizes[split]:
      errors.append(f'{name}={value} must be at most {sizes[split]} (the videos of the '
                    f"generator's {split} split).")
  if d.num_classes != generator.NUM_CLASSES:
    errors.append(f'data.num_classes={d.num_classes!r} must be {generator.NUM_CLASSES} '
                  '(the pairs of distinct digits and "no pair").')
  if config.data.motion not in generator.MOTIONS:
    errors.append(f'Unknown data.motion {config.data.motion!r}. Valid: '
                  f'{", ".join(generator.MOTIONS)}.')
  val_size = config.data.val_size
  if not 0 < val_size <= generator.SPLIT_SIZES['val']:
    errors.append(f'data.val_size must be in 1..{generator.SPLIT_SIZES["val"]}, got '
                  f'{val_size}.')
  try:  # the generator's own check, so the two can never disagree
    generator.check_no_pair_prob(config.data.get('no_pair_prob', generator.NO_PAIR_PROB))
  except ValueError as e:
    errors.append(f'data.{e}.')
  return errors


class DigitOracleView(evaluators.SingleView):
  """One view per video, plus the digit-oracle diagnostic (`oracle.digit_oracle_report`).

  The digit oracle knows which digits a video holds but not how they move; the report
  (in the metrics under 'oracle', and one printed line) gives its top-1 beside the
  model's, the model's top-1 on pair and on no-pair videos, and how often the model
  names a pair of present digits that do not move together. Above the oracle, the model
  uses motion. The data set gives `digits(split)` in the order of the batches.
  """

  def __call__(self, setup, state) -> evaluators.EvalResult:
    from rstg_jax.syncmnist import oracle  # pylint: disable=g-import-not-at-top
    result = super().__call__(setup, state)
    report = oracle.digit_oracle_report(result.labels, result.preds,
                                        setup.dataset.digits(self.split))
    line = (f'Digit oracle (knows the digits, not their motion): top-1 '
            f'{report["oracle_top1"]:.4f}; model: top-1 {report["top1"]:.4f}, on pair videos '
            f'{report["pair_top1"]:.4f} ({report["pair_videos"]}), on no-pair videos '
            f'{report["no_pair_top1"]:.4f} ({report["no_pair_videos"]}); names a present but '
            f'asynchronous pair in {report["present_async_pair"]:.4f} of the videos, a pair '
            f'with an absent digit in {report["absent_digit_pair"]:.4f}')
    result.metrics['oracle'] = report
    result.lines = (*result.lines, line)
    return result


def pretrained_backbone(config, workdir: str, params: dict, say) -> dict:
  """`params` with the backbone pre-trained on single digits (computed once, then read
  from the cache: `backbone.cache_path`, by default WORKDIR/backbone.npz)."""
  from rstg_jax.syncmnist import pretrain  # pylint: disable=g-import-not-at-top
  if 'backbone' not in params:
    raise errors.ConfigError('config.backbone.pretrain_steps > 0 but the model has no '
                             f'`backbone` submodule (top-level params: {sorted(params)}).')
  b = config.backbone
  # A shared cache (e.g. one for every run of a sweep) or the run's own.
  path = b.cache_path or os.path.join(workdir, 'backbone.npz')
  settings = dict(width=b.width, steps=b.pretrain_steps, batch_size=b.pretrain_batch_size,
                  seed=config.seed, learning_rate=b.pretrain_lr,
                  mnist_path=config.data.mnist_path, target=b.pretrain_target,
                  coords=bool(b.coords), frames=int(b.get('frames', 1)),
                  motion_steps=int(b.get('pretrain_motion_steps', 0)),
                  scene_steps=int(b.get('pretrain_scene_steps', 0)),
                  scene_digits=int(config.data.num_digits), scene_motion=config.data.motion)
  key = pretrain.backbone_cache_key(**settings)  # the cache is reused only for these
  backbone, why_not = pretrain.load_cached_backbone(path, key)
  if backbone is not None:
    say(f'Backbone: loading the pretrained backbone cached at {path}')
  else:
    motion = (f' then {settings["motion_steps"]} on their motion between two frames'
              if b.pretrain_target == 'digit_motion' else '')
    if settings['scene_steps']:
      motion += (f', then {settings["scene_steps"]} on every digit and its step in two '
                 'frames of the videos')
    say(f'Backbone: {why_not}; pretraining for {b.pretrain_steps} steps on single digits'
        f'{motion} (cached in workdir/backbone.npz for later runs)')
    backbone, pre = pretrain.pretrain_backbone(
        **settings, log_every=max(1, b.pretrain_steps // 10),
        progress_bar=config.progress_bar and jax.process_index() == 0)
    say(f'Backbone pretraining done in {pre.get("seconds", 0):.0f} s: final train loss '
        f'{pre.get("final_train_loss", float("nan")):.4f}, single-digit val accuracy '
        f'{pre.get("val_accuracy", float("nan")):.4f}'
        + (f', position error {pre["val_position_error_px"]:.2f} px'
           if 'val_position_error_px' in pre else '')
        + (f', step error {pre["val_motion_error_px"]:.2f} canvas px'
           if 'val_motion_error_px' in pre else '')
        + (f'; in the videos: digit accuracy {pre["scene_stage"]["val_accuracy"]:.4f}, step '
           f'error {pre["scene_stage"]["val_motion_error_px"]:.2f} canvas px'
           if 'scene_stage' in pre else ''))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # a new cache_path
      pretrain.save_backbone(path, backbone, key)  # atomic (temporary file + rename)
  host = jax.tree.map(lambda x: jax.device_get(x), params['backbone'])
  merged, report = init_from.merge_params({'backbone': host},
                                          {'backbone': jax.device_get(backbone)})
  say(init_from.summary('pretrained backbone', report))
  return dict(params, backbone=merged['backbone'])


TASK = SyncMNISTTask()
