"""Long work shows a progress bar on stderr (and only there), and stays quiet when off.

Runs the README recipe's toy task (`test_recipe.py`) through the real training loop and
reads what reached file descriptor 2.
"""

import re

from rstg_jax import tasks
from rstg_jax.train import loop

from test_recipe import ToyTask, toy_config


def _train(tmp_path, capfd, progress_bar: bool):
  tasks.register('toy', ToyTask())
  config = toy_config()
  config.progress_bar = progress_bar
  loop.train_and_evaluate(config, str(tmp_path), tasks.for_config(config))
  return capfd.readouterr()


def test_training_draws_a_progress_bar_on_stderr(tmp_path, capfd):
  out, err = _train(tmp_path, capfd, progress_bar=True)
  # tqdm's line for the train loop: its name, the final count of steps and a rate.
  bars = [line for line in re.split(r'[\r\n]', err) if line.startswith('train')]
  assert bars, err
  assert re.search(r'train: 100%\|.*\| 5/5 \[', bars[-1]), bars[-1]
  assert re.search(r'(s/step|step/s)', bars[-1])
  assert '5/5' not in out  # the bar never goes to stdout, where the results are printed


def test_no_bar_when_progress_bar_is_off(tmp_path, capfd):
  _, err = _train(tmp_path, capfd, progress_bar=False)
  assert not re.search(r'\d+/5 \[', err), err
