"""The training loop (in the shape of the Flax ImageNet example), generic over tasks.

`train_and_evaluate(config, workdir, task)` trains `task.create_model(config)` on
`task.create_dataset(config)`, evaluating every `eval.every` steps and at the end:

- The train state is one dict (`rstg_jax.train.state`), replicated; each batch is split
  over a 1-D mesh axis `data` of all devices (of all processes), so the same code runs
  on one CPU, on 4 fake CPU devices, on a GPU or on several hosts.
- Resumable exactly: the batch of step s is a function of (seed, s), the dropout key of
  step s is `fold_in(key, s)`, and everything else that changes during training
  (optimizer moments, the plateau scale) is in the checkpoint. The same command run
  again resumes from the latest checkpoint and ends with the same parameters. (A
  tf.data stream, Something-Something-v1, is the exception for the data order only.)
- Model selection: the plateau, the 'best' checkpoint and every number printed during
  training come from the task's `selection_split` (the data set's `eval_batches()`;
  SyncMNIST: 'val'). A task with a held-out `test_split` (SyncMNIST: 'test') has it
  evaluated once, at the end, with the checkpoint chosen on the selection split: a row
  with 'split': test_split, 'chosen_on' and 'final_step' in metrics.jsonl.
- A NaN or inf in the loss or the gradients stops the run before anything bad is saved.
"""

import os
import sys
import time
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from rstg_jax import cli
from rstg_jax import errors
from rstg_jax.train import checkpoints
from rstg_jax.train import input as input_lib
from rstg_jax.train import metrics as metrics_lib
from rstg_jax.train import optim
from rstg_jax.train import run_log
from rstg_jax.train import setup as setup_lib
from rstg_jax.train.state import State


class NonFiniteLossError(errors.DivergedError):
  """The loss or the gradients became NaN/inf; the last good checkpoint is kept."""


def train_and_evaluate(config, workdir: str, task, *, dataset=None,
                       setup: Optional[setup_lib.Setup] = None) -> State:
  """Trains (resuming from workdir's latest checkpoint if any); returns the final state.

  Args:
    config: the experiment config (see configs/common.py and the task's configs).
    workdir: checkpoints/, metrics.jsonl and curves.png go here (and task caches).
    task: the task (`rstg_jax.train.task.Task`; `rstg_jax.tasks.get(config)`).
    dataset: a data set to use instead of `task.create_dataset(config)` (tests).
    setup: `setup_lib.make_setup(config, task, dataset)` if the caller built it already
      (the main command does, before it creates the workdir).
  """
  setup = setup or setup_lib.make_setup(config, task, dataset)
  is_main = jax.process_index() == 0
  say = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  os.makedirs(workdir, exist_ok=True)
  opts, data = setup.options, setup.dataset
  say(f'Data: {data.description}')
  say(f'Devices: {jax.device_count()} x {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), {jax.process_count()} process(es); global batch '
      f'{opts.batch_size}, {opts.batch_size // jax.device_count()} per device')
  protocol = task.protocol(config)
  if protocol:
    say(f'Protocol: {protocol[0]} ({protocol[1]})')
  if is_main:
    checkpoints.remove_stale_tmp(workdir, say)
  mngr = checkpoints.manager(workdir, opts.keep_checkpoints)
  state = _restore_or_init(setup, mngr, workdir, say)
  say(f'Model: {setup_lib.describe(setup, state["params"])}')
  start, total = int(jax.device_get(state['step'])), opts.total_steps
  say(f'Training steps {start} -> {total} ({opts.optimizer}); workdir '
      f'{os.path.abspath(workdir)}')
  if opts.epochs:
    say(f'Run length from num_epochs: {opts.epochs} = {total:,} steps '
        '(num_train_steps <= 0; set --config.num_train_steps=N for a fixed length); the '
        'estimated time follows the first logged steps')
  if is_main:  # for launch/sweep.py and rstg_jax.report; DONE comes back at the end
    run_log.clear_done(workdir)
    run_log.write_config_json(workdir, setup.config_json, total, resume_step=start,
                              num_processes=jax.process_count(),
                              num_devices=jax.device_count(),
                              protocol=protocol[0] if protocol else None)
  log = _Log(setup, workdir, start, is_main, task.selection_split)
  evaluator = task.evaluator(config, data, final=False)
  try:
    with input_lib.Prefetcher(data, start, total, setup.to_device,
                              opts.prefetch) as batches:
      for s, batch in batches:
        state, m = setup.train_step(state, batch)
        step = s + 1
        log.train_step(step, m)
        is_last = step == total
        is_log = step % opts.log_every == 0 or is_last
        is_eval = step % opts.eval_every == 0 or is_last
        is_ckpt = step % opts.checkpoint_every == 0 or is_eval
        if not (is_log or is_eval or is_ckpt):
          continue
        _check_finite(log.take_nonfinite(), mngr)
        if is_log:
          log.write_train(step, state)
        eval_metrics = None
        if is_eval:
          eval_metrics, state = _evaluate(setup, evaluator, state, step, log)
        if is_ckpt:
          meta = checkpoints.metadata(setup.config_json, data.class_names, step,
                                      eval_metrics, eval_split=task.selection_split)
          checkpoints.save(mngr, step, state, meta, eval_metrics)
    if task.test_split is not None and int(jax.device_get(state['step'])) == total:
      log.test = _final_test(setup, task.evaluator(config, data, final=True), mngr, state,
                             log, task, say)
  finally:
    log.close()
    mngr.wait_until_finished()
    mngr.close()
  log.finish(state)
  return state


def _restore_or_init(setup, mngr, workdir: str, say) -> State:
  """The newest checkpoint that restores (after the resume checks), or the step-0 state
  of a fresh run."""
  if mngr.latest_step() is None:
    return setup_lib.initial_state(setup, workdir, say)
  state, meta, changed = checkpoints.restore_for_resume(
      mngr, setup.abstract_state, setup.config_json, setup.options.resume_changes_ok, say,
      is_main=jax.process_index() == 0, upgrade=setup.task.upgrade_config)
  if meta.get('class_names') != list(setup.dataset.class_names):
    raise checkpoints.ResumeError(
        'The checkpoint was trained with another class order: '
        f'{meta.get("class_names")} vs {list(setup.dataset.class_names)}.')
  say(f'Resuming from {mngr.directory} step {int(meta["step"])}'
      + (f' (config fields changed since: {changed})' if changed else ''))
  return state


def _check_finite(pending, mngr) -> None:
  """Raises at the first non-finite step since the last check (before any save)."""
  for s, bad in jax.device_get(pending):
    if bad[0] > 0:
      raise NonFiniteLossError(
          f'Loss or gradients became NaN/inf at step {s}; training stopped. Nothing '
          f'after it was saved: the last good checkpoint is step {mngr.latest_step()} in '
          f'{mngr.directory}. Try a lower optim.learning_rate or set '
          'optim.grad_clip_norm, then rerun the same command to resume from it.')


def _evaluate(setup, evaluator, state: State, step: int, log) -> tuple[dict, State]:
  """Runs the evaluator, logs it and applies the plateau rule (which updates state)."""
  t0 = time.time()
  result = evaluator(setup, state)
  eval_metrics = {k: result.metrics[k] for k in ('loss', 'top1', 'top5')}
  msg = (f'step {step}: {log.split} top-1 {eval_metrics["top1"]:.4f}, top-5 '
         f'{eval_metrics["top5"]:.4f}, loss {eval_metrics["loss"]:.4f}')
  rule = setup.options.plateau
  if rule is not None:
    plateau, reduced = optim.update_plateau(jax.device_get(state['plateau']),
                                            eval_metrics, rule)
    state = dict(state, plateau=jax.device_put(plateau, setup.replicated))
    if reduced:
      msg += f'; plateau: learning-rate scale -> {float(plateau["scale"]):g}'
  log.write_eval(step, eval_metrics, time.time() - t0, msg)
  return eval_metrics, state


def _final_test(setup, evaluator, mngr, state: State, log, task, say) -> Optional[dict]:
  """Evaluates the checkpoint chosen on the selection split once on `task.test_split`.

  Writes one row for the best checkpoint by selection top-1 (the latest if none has
  metrics); a rerun of a finished run that already has that row does not evaluate again.
  """
  total = setup.options.total_steps
  best = mngr.best_step()
  best = mngr.latest_step() if best is None else best
  if best is None:
    return None
  done = next((row for row in metrics_lib.read_jsonl(log.path)
               if row.get('split') == task.test_split and row.get('step') == best
               and row.get('final_step') == total), None)
  found = done is not None
  if jax.process_count() > 1:  # process 0's metrics.jsonl decides for every process
    found = bool(multihost_utils.broadcast_one_to_all(np.int32(found)))
  if found:
    return done
  if best != int(jax.device_get(state['step'])):
    state = checkpoints.restore(mngr, best, setup.abstract_state)[0]
  t0 = time.time()
  result = evaluator(setup, state)
  row = {'step': int(best), 'split': task.test_split,
         **{k: result.metrics[k] for k in ('loss', 'top1', 'top5', 'count')},
         'chosen_on': task.selection_split, 'final_step': int(total),
         'eval_seconds': time.time() - t0}
  log.writer.write(row)
  say(f'{task.test_split} (checkpoint of step {best}, chosen on {task.selection_split} '
      f'top-1): top-1 {row["top1"]:.4f}, top-5 {row["top5"]:.4f}, loss {row["loss"]:.4f} '
      f'on {row["count"]} videos')
  for line in result.lines:
    say(line)
  return row


def _duration(seconds: float) -> str:
  """'42 s', '12.5 min' or '8.6 h'."""
  if seconds < 120:
    return f'{seconds:.0f} s'
  if seconds < 2 * 3600:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.1f} h'


class _Log:
  """metrics.jsonl rows, the progress bar, the window of train metrics, curves.png."""

  def __init__(self, setup, workdir: str, start: int, is_main: bool, split: str):
    self.setup, self.workdir, self.is_main, self.split = setup, workdir, is_main, split
    self.test = None  # the final test row, if the task has a test split
    self.path = os.path.join(workdir, 'metrics.jsonl')
    # metrics.jsonl with wall time, and the same rows as TensorBoard scalars.
    self.writer = run_log.RunLog(workdir, start, is_main)
    self.window, self.pending, self.last_eval = None, [], None
    self.t_window, self.n_window = time.time(), 0
    self.logged = 0  # train rows written by this process (the second one gives the ETA)
    self.pbar = tqdm.tqdm(
        total=setup.options.total_steps, initial=start, desc='train', unit='step',
        dynamic_ncols=True, disable=not (is_main and setup.options.progress_bar),
        file=sys.stderr, mininterval=cli.progress_interval())

  def train_step(self, step: int, m: dict) -> None:
    self.pending.append((step, m['nonfinite']))
    self.window = metrics_lib.add(self.window, {k: m[k] for k in ('loss', 'accuracy')})
    self.n_window += 1
    self.pbar.update(1)

  def take_nonfinite(self) -> list:
    pending, self.pending = self.pending, []
    return pending

  def write_train(self, step: int, state: State) -> None:
    row = metrics_lib.compute(jax.device_get(self.window))
    dt = time.time() - self.t_window
    scale = float(jax.device_get(state['plateau']['scale']))
    row = {'step': step, 'split': 'train', **row,
           'lr': float(self.setup.lr_fn(step - 1)) * scale,
           'videos_per_sec': self.n_window * self.setup.options.batch_size / max(dt, 1e-9)}
    self.writer.write(row)
    self.logged += 1
    if self.logged == 2 and self.is_main:  # the first window holds the compilation
      self._estimate(step, dt / max(self.n_window, 1))
    last = self.last_eval
    self.pbar.set_postfix(loss=f'{row["loss"]:.3f}', acc=f'{row["accuracy"]:.3f}',
                          **({f'{self.split}_top1': f'{last["top1"]:.3f}'} if last else {}),
                          refresh=False)  # drawn at the bar's own interval
    self.window, self.t_window, self.n_window = None, time.time(), 0

  def _estimate(self, step: int, seconds_per_step: float) -> None:
    left = self.setup.options.total_steps - step
    tqdm.tqdm.write(
        f'Estimated time: {_duration(left * seconds_per_step)} for the remaining {left:,} '
        f'steps at {seconds_per_step:.3g} s/step (training only, evaluations not counted)',
        file=sys.stdout)

  def write_eval(self, step: int, eval_metrics: dict, seconds: float, msg: str) -> None:
    self.last_eval = eval_metrics
    self.writer.write({'step': step, 'split': self.split, **eval_metrics,
                       'eval_seconds': seconds})
    if self.is_main:
      tqdm.tqdm.write(msg, file=sys.stdout)
    self.t_window = time.time()  # evaluation time is not training throughput.

  def close(self) -> None:
    self.pbar.close()
    self.writer.close()

  def finish(self, state: State) -> None:
    if not self.is_main:
      return
    curves = os.path.join(self.workdir, 'curves.png')
    metrics_lib.plot_curves(metrics_lib.read_jsonl(self.path), curves)
    step = int(jax.device_get(state['step']))
    run_log.write_done(self.workdir, step=step, last_eval=self.last_eval, test=self.test)
    print(f'Done: step {step}; curves in {curves}'
          + (f'; last {self.split} top-1 {self.last_eval["top1"]:.4f}' if self.last_eval
             else '')
          + (f'; {self.test["split"]} top-1 {self.test["top1"]:.4f} (step '
             f'{self.test["step"]}, chosen on {self.test["chosen_on"]})' if self.test else ''),
          flush=True)
