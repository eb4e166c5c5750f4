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

Expected runtime: 1 h 50 min 15 s on the idle 2-core machine (pre-training 2 min, then
~7.6 steps/s, 245 videos/s, with 20 val evaluations and the final test).
Expected result: 60.0% top-1 (top-5 92.6) on all 10,000 clean test videos, checkpoint
chosen on val (step 42,500, val top-1 61.6 on 2,000 val videos); the digit oracle gets
32.6. Val top-1 every 2,500 steps: 31.9 / 35.2 / 38.1 / 41.1 / 43.0 / 45.5 / 48.9 / 50.5
/ 51.4 / 51.9 / 56.0 / 56.0 / 57.6 / 59.9 / 60.1 / 60.9 / 61.6 / 61.0 / 61.2 / 61.5.
The model names a present but asynchronous pair in 27.1% of the test videos and a pair
with an absent digit in 12.7%.
"""

from configs import syncmnist_quick


def get_config():
  config = syncmnist_quick.get_config()
  config.num_train_steps = 50_000
  config.eval.every = 2_500  # val (2,000 videos) 20 times: selection and the curve
  config.checkpoint_every = 2_500
  config.log_every = 100
  return config
