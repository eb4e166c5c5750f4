"""The jitted computations of training and evaluation, as pure functions of the state.

`train_step` and `eval_step` return metrics as (sum, count) pairs
(`rstg_jax.train.metrics`); `logits_step` returns the logits of a batch of clips for the
multi-view evaluation. `preprocess` is the data set's on-device input normalisation
(default: uint8 / 255).
"""

import jax
import jax.numpy as jnp
import optax

from rstg_jax.train.state import State, model_variables


def scale_pixels(video):
  """uint8 travels host -> device (4x fewer bytes); the scaling runs on the device."""
  return video.astype(jnp.float32) / 255.0


def train_step(state: State, batch: dict, *, model, tx, base_key,
               preprocess=scale_pixels) -> tuple[State, dict]:
  """One step on a global batch; returns the new state and (sum, count) metrics.

  The dropout key of step s is `fold_in(base_key, s)`, so a resumed run draws the same
  keys as an uninterrupted one. 'nonfinite' is 1 when the loss or the gradients hold a
  NaN or inf (the loop stops the run before anything bad is saved).
  """
  step = state['step']
  dropout_key = jax.random.fold_in(base_key, step)
  video = preprocess(batch['video'])
  labels = batch['label']

  def loss_fn(params):
    logits, new_vars = model.apply(
        model_variables(state, params), video, train=True, mutable=['batch_stats'],
        rngs={'dropout': dropout_key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, new_vars)

  (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  scale = state['plateau']['scale']
  updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
  params = optax.apply_updates(state['params'], updates)

  n = jnp.asarray(labels.shape[0], jnp.float32)
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  metrics = {
      'loss': (loss * n, n),
      'accuracy': (jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32), n),
      'nonfinite': (1.0 - finite.astype(jnp.float32), jnp.asarray(1.0)),
  }
  new_state = dict(state, step=step + 1, params=params, opt_state=opt_state,
                   batch_stats=new_vars.get('batch_stats', state['batch_stats']))
  return new_state, metrics


def eval_step(state: State, batch: dict, *, model,
              preprocess=scale_pixels) -> tuple[dict, jax.Array]:
  """Masked (sum, count) loss, top-1 and top-5 on a test batch, and the predictions."""
  logits = model.apply(model_variables(state), preprocess(batch['video']), train=False)
  labels, mask = batch['label'], batch['mask']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  topk = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  n = mask.sum()
  metrics = {
      'loss': ((loss * mask).sum(), n),
      'top1': (((topk[:, 0] == labels) * mask).sum(), n),
      'top5': ((jnp.any(topk == labels[:, None], -1) * mask).sum(), n),
  }
  return metrics, topk[:, 0]


def logits_step(state: State, video, *, model, preprocess=scale_pixels) -> jax.Array:
  """Logits of a batch of clips (views of a multi-view evaluation)."""
  return model.apply(model_variables(state), preprocess(video), train=False)
