"""The digit oracle: does a SyncMNIST model use motion, or only the digits it sees?

`digit_oracle_report` sets a model's predictions beside the best a "digit oracle" can do
(it knows which digits a video holds, not how they move); `rstg_jax.evaluate` prints it
for SyncMNIST through the task's evaluator.
"""

from __future__ import annotations

import numpy as np

from rstg_jax.syncmnist.generator import NO_PAIR_LABEL, PAIRS


def digit_oracle_report(labels, preds, digits) -> dict[str, float]:
  """Does a model use motion? Its accuracy beside that of the "digit oracle".

  The digit oracle knows which digit classes a video holds but not how they move. The
  digit slots are exchangeable, so each of the m = K(K-1)/2 pairs of present classes is
  a priori equally likely to be the synchronous one, and "no pair" (prior 1/47) is less
  likely than any of them: the best it can do is name one of the m pairs, which is
  right with probability 1/m on a pair video and never on a no-pair video. This is the
  optimal oracle (knowing the class prior does not help), computed exactly per video.

  Args:
    labels: int [n] true labels; preds: int [n] predicted labels; digits: int [n, K]
      the classes present in each video.

  Returns:
    dict: ``top1``; ``oracle_top1`` (expected accuracy of the digit oracle);
    ``pair_top1`` / ``no_pair_top1`` (the model's accuracy on pair / no-pair videos)
    and ``pair_videos`` / ``no_pair_videos`` (their counts); ``present_async_pair``
    (fraction of videos where the model names a pair of digits that are present but
    not synchronous), ``absent_digit_pair`` (names a pair with a digit not in the
    video) and ``predicts_no_pair`` (fraction of "none" predictions).
  """
  labels, preds = np.asarray(labels), np.asarray(preds)
  digits = np.asarray(digits)
  n, k = digits.shape
  if not len(labels) == len(preds) == n:
    raise ValueError(f'labels {labels.shape}, preds {preds.shape}, digits {digits.shape} disagree')
  present = np.zeros((n, 10), bool)
  present[np.arange(n)[:, None], digits] = True
  pairs = np.array(PAIRS + [(0, 0)])  # "none" maps to a dummy pair, masked below
  named = pairs[preds]  # [n, 2]
  names_pair = preds != NO_PAIR_LABEL
  both_present = present[np.arange(n), named[:, 0]] & present[np.arange(n), named[:, 1]]
  correct = preds == labels
  has_pair = labels != NO_PAIR_LABEL
  m = k * (k - 1) / 2
  mean = lambda x: float(np.mean(x)) if np.size(x) else float('nan')
  return {
      'top1': mean(correct),
      'oracle_top1': mean(np.where(has_pair, 1.0 / m, 0.0)),
      'pair_top1': mean(correct[has_pair]),
      'no_pair_top1': mean(correct[~has_pair]),
      'pair_videos': int(has_pair.sum()),
      'no_pair_videos': int((~has_pair).sum()),
      'present_async_pair': mean(names_pair & both_present & ~correct),
      'absent_digit_pair': mean(names_pair & ~both_present),
      'predicts_no_pair': mean(~names_pair),
  }
