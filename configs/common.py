"""The trainer's fields, shared by every task's configs (no task fields here).

A task's configs start from this one and add their own blocks: `configs/syncmnist_base.py`
(SyncMNIST) and `configs/ssv1_i3d.py` (Something-Something-v1). Namespaces:

  top level   seed, batch_size, num_train_steps, num_epochs, log_every, checkpoint_every,
              keep_checkpoints, progress_bar, resume_changes_ok (and the task's
              `model`, `ablation`)
  data.*      name (picks the task, `rstg_jax.tasks`), num_classes, train_size, prefetch,
              and the task's data fields
  optim.*     optimizer, learning rate and schedule, `optim.plateau.*`
  eval.*      evaluations (of the task's splits): size, batch_size, every (and views)
  init_from.* path (another run's workdir, or a file the task knows) and dont_load

Override any field with `--config.<name>=<value>`. The config is locked, so a misspelt
field fails with ml_collections' "did you mean". Optional paths are `placeholder(str)`:
a field that defaults to a bare None could not be set from the command line.
"""

from ml_collections import config_dict


def get_config():
  config = config_dict.ConfigDict()

  # --- Data (the task adds its fields) ------------------------------------------------
  config.data = config_dict.ConfigDict()
  config.data.name = config_dict.placeholder(str)  # the task: rstg_jax.tasks.names()
  config.data.num_classes = 0
  config.data.train_size = 0  # videos per epoch: turns num_epochs into steps.
  config.data.prefetch = 2  # batches prepared ahead by the background thread.

  # --- Training -----------------------------------------------------------------------
  config.seed = 0  # parameter init, training order, dropout.
  config.batch_size = 32  # global, over all devices and hosts.
  config.num_epochs = 10.0  # epochs of `data.train_size` videos ...
  config.num_train_steps = -1  # ... unless this is > 0.

  config.init_from = config_dict.ConfigDict()
  # Another run's workdir (its latest checkpoint), or a file the task knows how to read.
  config.init_from.path = config_dict.placeholder(str)
  # Regexes (full match, over 'params/...' / 'batch_stats/...') of model variables that
  # keep their init values when loading `init_from.path`.
  config.init_from.dont_load = ()

  config.optim = config_dict.ConfigDict()
  config.optim.optimizer = 'sgd'  # 'sgd' (Nesterov momentum) or 'adam'.
  config.optim.learning_rate = 1e-4
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 0.0  # 0: no clipping.
  config.optim.lr_schedule = 'constant'  # 'constant' or 'cosine' (to 0 at the last step).
  config.optim.warmup_steps = 0

  # Learning rate divided by 10 when the eval metric stops improving (paper); the eval
  # split is the task's selection split (SyncMNIST: val).
  config.optim.plateau = config_dict.ConfigDict()
  config.optim.plateau.enabled = True
  config.optim.plateau.metric = 'top1'  # 'top1' (higher is better) or 'loss' (lower).
  config.optim.plateau.factor = 0.1
  config.optim.plateau.patience = 3  # evaluations without improvement before a reduction.
  config.optim.plateau.min_delta = 1e-3  # an improvement smaller than this does not count.
  config.optim.plateau.min_scale = 1e-3  # at most three reductions of 10x.

  # --- Evaluation, logging, checkpoints -----------------------------------------------
  config.eval = config_dict.ConfigDict()
  # Videos evaluated: the task says which split and when (SyncMNIST: test, once at the
  # end; SSv1: the validation videos evaluated during training).
  config.eval.size = 10_000
  config.eval.batch_size = 100
  config.eval.every = 2_000  # steps; also evaluated at the last step.
  config.log_every = 50
  config.checkpoint_every = 1_000  # also saved at every evaluation and the last step.
  config.keep_checkpoints = 3  # the latest N are kept, plus the best by eval top-1.
  config.progress_bar = True
  # Resuming a workdir checks the saved config first: a change to the model (its
  # parameter shapes) always stops the run, and so does a change to the training stream
  # (batch_size, seed, data.seed, data.train_size, ...), unless this is True: then the
  # run resumes on purpose with the new stream.
  config.resume_changes_ok = False
  return config
