r"""The 2-hour 3SyncMNIST recipe for 2 CPU cores: the quick recipe trained 5.5x longer.

Command:

  python -m rstg_jax.main --config=configs/syncmnist_cpu.py --workdir=runs/cpu
  python -m rstg_jax.evaluate --workdir=runs/cpu --checkpoint=best

Everything is `configs/syncmnist_quick.py` (positional all-temp RSTG, K = 1, D = 64, on a
frozen 32-wide backbone pre-trained on single digits; Adam 2e-3 with a cosine schedule)
except the length of the run: 50,000 steps of 32 videos (1.6M fresh videos, 2.7 passes
over the 600k training stream) instead of 9,000, so that the whole command, pre-training
and evaluation included, fits in 2 hours on the idle 2-core machine. None of the quick
config's trials (see its docstring) learned the motion faster per video than the quick
recipe, so the longer schedule is the only change; issue 12's target for this recipe
(85% top-1) was not reached: see the README ("Learning synchrony on 2 CPU cores") for
the measured run, its learning curve and what limits it.

Expected runtime: about 1 h 55 min on the idle 2-core machine (pre-training 2 min, then
~7.6 steps/s, 245 videos/s, with 20 val evaluations and the final test).
Expected result: the measured run's val top-1 on 2,000 val videos at steps 2,500 / 5,000
/ 7,500 / 10,000: 32.0 / 35.2 / 38.1 / 41.1 (still rising; the digit oracle gets 32.6).
"""

from configs import syncmnist_quick


def get_config():
  config = syncmnist_quick.get_config()
  config.num_train_steps = 50_000
  config.eval.every = 2_500  # val (2,000 videos) 20 times: selection and the curve
  config.checkpoint_every = 2_500
  config.log_every = 100
  return config
