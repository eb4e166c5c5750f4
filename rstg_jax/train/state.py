"""The train state: one plain dict, built in one step (the big_vision habit).

  state = {
      'step': int32 scalar,
      'params': the model's parameters,
      'batch_stats': BatchNorm statistics ({} for a model without BatchNorm),
      'opt_state': the optax state of `tx`,
      'plateau': {'scale', 'best', 'num_bad'}: the host-updated plateau state whose
          `scale` multiplies every update (see `rstg_jax.train.optim`),
  }

Everything that changes during training is in it, so a checkpoint of it resumes a run
exactly. The helpers here do not read the config.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

State = dict[str, Any]


def init_variables(model, rng, input_shape) -> dict:
  """Model variables from a 1-video dummy input (train=False: no dropout rng needed)."""
  video = jnp.zeros((1, *input_shape), jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, video, train=False)
  return flax.core.unfreeze(variables)


def initial_plateau() -> dict:
  return {'scale': jnp.asarray(1.0, jnp.float32),
          'best': jnp.asarray(-jnp.inf, jnp.float32),
          'num_bad': jnp.asarray(0, jnp.int32)}


def create_train_state(params, batch_stats, tx) -> State:
  """The state at step 0 for these (possibly pre-trained) variables."""
  return {
      'step': jnp.asarray(0, jnp.int32),
      'params': params,
      'batch_stats': batch_stats,
      'opt_state': tx.init(params),
      'plateau': initial_plateau(),
  }


def model_variables(state: State, params=None) -> dict:
  """The `variables` argument of `model.apply` for this state (or other params)."""
  variables = {'params': state['params'] if params is None else params}
  if state['batch_stats']:
    variables['batch_stats'] = state['batch_stats']
  return variables


def param_count(tree, mask: Optional[Any] = None) -> int:
  """Scalars in a pytree of arrays or ShapeDtypeStructs; with a bool `mask` of the same
  structure, only those of the leaves where it is True."""
  leaves = jax.tree.leaves(tree)
  keep = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
  return int(sum(int(np.prod(x.shape)) for x, k in zip(leaves, keep) if k))
