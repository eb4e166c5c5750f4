"""The SyncMNIST task: what the trainer gets for `config.data.name == 'syncmnist'`.

Model: `rstg_jax.syncmnist.models.create_model` (RSTG or a baseline). Data: videos
generated on the fly (`rstg_jax.syncmnist.dataset`). Pre-trained weights: the backbone
pre-trained by the stages of `backbone.pretrain.stages` (`rstg_jax.syncmnist.pretrain`;
cached in `WORKDIR/backbone.npz`), then `init_from.path` (another run). Protocol: which
of the paper's protocols the config follows (`rstg_jax.syncmnist.protocols`). Frozen:
the backbone when `backbone.freeze`. Splits: training evaluates and selects on the first
`data.val_size` videos of 'val' (videos of the last 10,000 MNIST training digits, which
neither the training stream nor the backbone pre-training reads); the first `eval.size`
videos of 'test' are evaluated once at the end of training, and by the evaluate command
together with the digit-oracle diagnostic (`DigitOracleView`). No TensorFlow anywhere on
this path.
"""

import os

import jax

from rstg_jax import errors
from rstg_jax.syncmnist import models
from rstg_jax.syncmnist import protocols
from rstg_jax.syncmnist.baselines import NUM_BACKBONE_LAYERS
from rstg_jax.train import config_checks
from rstg_jax.train import evaluators
from rstg_jax.train import init_from
from rstg_jax.train import task as task_lib
from rstg_jax.train import workdir_lock
from rstg_jax.train.state import param_count


class SyncMNISTTask(task_lib.Task):
  """See the module docstring."""

  name = 'syncmnist'
  selection_split = 'val'
  test_split = 'test'

  def config_errors(self, config) -> list[str]:
    errors = models.config_errors(config) + data_config_errors(config)
    errors += pretrain_config_errors(config)
    # The training stream is drawn from the first data.train_size videos.
    errors += config_checks.positive_errors(
        ('data.train_size', config.data.train_size, 'a positive integer (the training videos)',
         dict(integer=True)))
    return errors

  def upgrade_config(self, saved: dict) -> dict:
    """A saved config with today's fields (`protocols.upgrade_config`)."""
    return protocols.upgrade_config(saved)

  def protocol(self, config) -> tuple[str, str]:
    """(protocol, why): 'paper', 'motion_backbone' or 'privileged' (`protocols`)."""
    return protocols.explain(config)

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
    d = config.data
    return SyncMNISTDataset(
        num_digits=d.num_digits, data_seed=d.seed, mnist_path=d.mnist_path,
        train_size=d.train_size, batch_size=config.batch_size, seed=config.seed,
        eval_size=config.eval.size, eval_batch_size=config.eval.batch_size,
        val_size=d.val_size, motion=d.motion, no_pair_prob=d.no_pair_prob,
        process_index=process_index, process_count=process_count)

  def frozen_mask(self, config, params):
    if not config.backbone.freeze:
      return None
    if 'backbone' not in params:
      raise errors.ConfigError('config.backbone.freeze is set but the model has no '
                               f'`backbone` submodule (top-level params: {sorted(params)}).')
    # backbone.train_layers: its last layers still train (conv0..conv2 in order).
    trained = {f'conv{i}' for i in range(NUM_BACKBONE_LAYERS - config.backbone.get(
        'train_layers', 0), NUM_BACKBONE_LAYERS)}
    backbone = {layer: jax.tree.map(lambda _, f=layer not in trained: f, w)
                for layer, w in params['backbone'].items()}
    return {k: backbone if k == 'backbone' else jax.tree.map(lambda _: False, v)
            for k, v in params.items()}

  def load_pretrained(self, config, workdir: str, variables: dict, say) -> dict:
    if protocols.stage_names(config.backbone.pretrain.stages):
      cache = backbone_cache_path(config, workdir)  # runs sharing it pre-train once
      with workdir_lock.exclusive(cache + '.lock', 'Backbone: waiting for the process '
                                  f'that is pre-training {cache}', 'backbone pre-training'):
        variables = dict(variables, params=pretrained_backbone(
            config, workdir, variables['params'], say))
    return super().load_pretrained(config, workdir, variables, say)

  def describe_model(self, config, params) -> str:
    ablation = f', ablation {config.ablation}' if config.model == 'rstg' else ''
    return (f'{type(models.create_model(config)).__name__} ({config.model}{ablation}): '
            f'{param_count(params):,} parameters')

  def explainer(self, config, dataset):
    from rstg_jax.syncmnist import explain_figures  # pylint: disable=g-import-not-at-top
    return explain_figures.SyncMNISTExplainer(config, dataset)

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
    generator.check_no_pair_prob(config.data.no_pair_prob)
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


def backbone_cache_path(config, workdir: str) -> str:
  """A shared cache (e.g. one for every run of a sweep) or the run's own."""
  return config.backbone.pretrain.cache_path or os.path.join(workdir, 'backbone.npz')


def pretrain_config_errors(config) -> list[str]:
  """The `backbone.pretrain` block: known stage names, each at most once, one-frame
  stages first, two-frame stages only with `backbone.frames = 2`; positive steps per
  stage, and a positive learning rate and batch size when there is a stage."""
  p, errors = config.backbone.pretrain, []
  names = protocols.stage_names(p.stages)
  for name in names:
    if name not in protocols.STAGES:
      errors.append(f'Unknown stage {name!r} in backbone.pretrain.stages. Valid: '
                    f'{", ".join(protocols.STAGES)} (e.g. '
                    '--config.backbone.pretrain.stages=digit,motion).')
    elif names.count(name) > 1:
      errors.append(f'backbone.pretrain.stages names {name!r} twice; a stage runs once, '
                    f'for backbone.pretrain.steps.{name} steps.')
  stages = [protocols.STAGES[n] for n in dict.fromkeys(names) if n in protocols.STAGES]
  for before, after in zip(stages, stages[1:]):
    if after.frames < before.frames:
      errors.append(f"backbone.pretrain.stages: the one-frame '{after.name}' stage cannot "
                    f"follow the two-frame '{before.name}' stage; put one-frame stages first.")
  two = [s.name for s in stages if s.frames == 2]
  if two and config.backbone.frames != 2:
    errors.append(f'backbone.pretrain.stages {two} need a backbone that sees two frames: '
                  'set backbone.frames = 2.')
  errors += config_checks.positive_errors(*[
      (f'backbone.pretrain.steps.{s.name}', p.steps[s.name], 'a positive integer (the '
       f"'{s.name}' stage's steps)", dict(integer=True)) for s in stages])
  if names:
    errors += config_checks.positive_errors(
        ('backbone.pretrain.lr', p.lr, 'a positive finite number'),
        ('backbone.pretrain.batch_size', p.batch_size, 'a positive integer',
         dict(integer=True)))
  return errors


def pretrain_plan(config):
  """The `pretrain.Plan` of a config's `backbone.pretrain` block."""
  from rstg_jax.syncmnist import pretrain  # pylint: disable=g-import-not-at-top
  from rstg_jax.syncmnist import pretrain_data  # pylint: disable=g-import-not-at-top
  b = config.backbone
  return pretrain.Plan(
      stages=tuple((n, int(b.pretrain.steps[n]))
                   for n in protocols.stage_names(b.pretrain.stages)),
      width=int(b.width), frames=int(b.frames), batch_size=int(b.pretrain.batch_size),
      learning_rate=float(b.pretrain.lr), seed=int(config.seed),
      source=pretrain_data.Source(config.data.mnist_path, int(config.data.num_digits),
                                  config.data.motion))


def pretrained_backbone(config, workdir: str, params: dict, say) -> dict:
  """`params` with the backbone pre-trained by the config's stages (computed once, then
  read from the cache: `backbone.pretrain.cache_path`, by default WORKDIR/backbone.npz)."""
  from rstg_jax.syncmnist import pretrain  # pylint: disable=g-import-not-at-top
  if 'backbone' not in params:
    raise errors.ConfigError(
        'config.backbone.pretrain.stages names stages but the model has no `backbone` '
        f'submodule (top-level params: {sorted(params)}).')
  path = backbone_cache_path(config, workdir)
  plan = pretrain_plan(config)
  key = plan.cache_key()  # the cache is reused only for this plan
  backbone, why_not = pretrain.load_cached_backbone(path, key)
  if backbone is not None:
    say(f'Backbone: loading the pretrained backbone cached at {path}')
  else:
    say(f'Backbone: {why_not}; pretraining in stages: ' + ', then '.join(
        f'{steps} steps on {protocols.STAGES[name].trains_on} ({name!r})'
        for name, steps in plan.stages) + f' (cached in {path} for later runs)')
    backbone, pre = pretrain.pretrain_backbone(
        plan, log_every=max(1, min(steps for _, steps in plan.stages) // 10),
        progress_bar=config.progress_bar and jax.process_index() == 0)
    say(f'Backbone pretraining done in {pre["seconds"]:.0f} s: ' + '; '.join(
        f'{name}: final train loss {m["final_train_loss"]:.4f}, val digit accuracy '
        f'{m.get("val_accuracy", float("nan")):.4f}'
        + (f', step error {m["val_step_error_px"]:.2f} canvas px'
           if 'val_step_error_px' in m else '') for name, m in pre['stages'].items()))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # a new cache_path
      pretrain.save_backbone(path, backbone, key)  # atomic (temporary file + rename)
  host = jax.tree.map(lambda x: jax.device_get(x), params['backbone'])
  merged, report = init_from.merge_params({'backbone': host},
                                          {'backbone': jax.device_get(backbone)})
  say(init_from.summary('pretrained backbone', report))
  return dict(params, backbone=merged['backbone'])


TASK = SyncMNISTTask()
