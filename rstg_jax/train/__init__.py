"""The training library: state, steps, optimizer, checkpoints, evaluators and the loop.

It knows no data set: a task (`rstg_jax.train.task.Task`) hands it the model and the data.
"""
