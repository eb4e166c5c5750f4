"""Many processes, many hosts: `jax.distributed` set-up for `rstg_jax.main`.

`initialize(...)` must run before anything touches a JAX backend. Three cases:

- `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`: process I of N,
  coordinated by process 0, which serves on HOST:PORT (`launch/local.sh` on one machine).
  Inside a SLURM job `--process_id` may be left out: JAX reads it from SLURM_PROCID
  (`launch/slurm.sbatch`), and gives each task the GPU of its SLURM_LOCALID.
- no flag, in a known cluster environment with more than one task (a SLURM step with
  SLURM_NTASKS > 1, an Open MPI job with OMPI_COMM_WORLD_SIZE > 1):
  `jax.distributed.initialize()` reads everything from the environment.
- no flag elsewhere: one process, nothing to set up.

On CPU the processes talk through JAX's CPU collectives (gloo, the default in jax 0.10).

When a peer never shows up, JAX's coordination client aborts the process from C++ with
a stack trace; a watchdog here ends it first with one line that says what to check.
`check_same_config` then compares the config (and workdir) of every process and stops
them all with the differing fields named, instead of letting them train on different
settings or hang in a collective.
"""

import hashlib
import json
import os
import sys
import threading
from typing import Optional

from rstg_jax import cli

DEFAULT_TIMEOUT = 300  # seconds for every process to join (JAX's default too).


def detected_cluster(environ=None) -> Optional[str]:
  """Name of a multi-task cluster environment JAX can read its set-up from, or None.

  A SLURM allocation running a single task (an interactive shell, `python` without
  `srun`) stays single-process: only a step with more than one task counts.
  """
  env = os.environ if environ is None else environ
  if 'SLURM_JOB_ID' in env and _int(env.get('SLURM_NTASKS') or env.get('SLURM_NPROCS')) > 1:
    return 'slurm'
  if _int(env.get('OMPI_COMM_WORLD_SIZE')) > 1:
    return 'ompi'
  return None


def _int(value) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    return 0


def plan(coordinator_address: Optional[str], num_processes: Optional[int],
         process_id: Optional[int], environ=None) -> Optional[dict]:
  """The keyword arguments for `jax.distributed.initialize`, or None for one process.

  Raises:
    ValueError: an incomplete or inconsistent set of flags.
  """
  cluster = detected_cluster(environ)
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  if all(v is None for v in given.values()):
    return {} if cluster else None
  if coordinator_address is None or num_processes is None:
    raise ValueError('--coordinator_address and --num_processes go together (and '
                     '--process_id, unless SLURM or Open MPI gives it); got '
                     + ', '.join(f'--{k}={v}' for k, v in given.items() if v is not None))
  if ':' not in coordinator_address:
    raise ValueError(f'--coordinator_address={coordinator_address!r} must be HOST:PORT.')
  if num_processes < 1:
    raise ValueError(f'--num_processes must be positive, got {num_processes}.')
  if process_id is None and not cluster:
    raise ValueError('--process_id is required outside a SLURM or Open MPI job.')
  if process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} must be in [0, {num_processes}).')
  return {k: v for k, v in given.items() if v is not None}


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               timeout: int = DEFAULT_TIMEOUT) -> bool:
  """Calls `jax.distributed.initialize` when there is more than one process.

  Returns True when it did. Exits with one line when the flags are inconsistent or when
  the processes do not all join within `timeout` seconds.
  """
  try:
    kwargs = plan(coordinator_address, num_processes, process_id)
  except ValueError as e:
    raise SystemExit(f'ERROR: {e}') from None
  if kwargs is None:
    return False
  import jax  # pylint: disable=g-import-not-at-top

  where = kwargs.get('coordinator_address') or f'the {detected_cluster()} environment'
  who = (f'process {kwargs["process_id"]}' if 'process_id' in kwargs else 'this process')
  total = kwargs.get('num_processes', '?')
  joined = threading.Event()

  def watchdog():
    if not joined.wait(timeout):
      sys.stderr.write(
          f'ERROR: {who} of {total}: not every process joined the coordinator at {where} '
          f'within {timeout} s (--distributed_timeout). Start all {total} processes with '
          'the same --coordinator_address and --num_processes, each with its own '
          '--process_id, and check that HOST:PORT is reachable from every host.\n')
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watchdog, daemon=True, name='distributed-watchdog').start()
  # JAX gets a little longer than the watchdog, so that our message wins over its abort.
  jax.distributed.initialize(initialization_timeout=int(timeout) + 30, **kwargs)
  joined.set()
  return True


def config_differences(mine: dict, other: dict) -> list[str]:
  """Flat field names whose values differ between two JSON-able dicts."""
  a, b = cli.flatten(mine), cli.flatten(other)
  return sorted(k for k in set(a) | set(b) if a.get(k, '<unset>') != b.get(k, '<unset>'))


def check_same_config(settings: dict):
  """Exits in every process, naming the fields, when the processes' settings differ.

  Args:
    settings: JSON-able, e.g. {'config': config JSON, 'workdir': ..., 'mode': ...}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  text = json.dumps(settings, sort_keys=True).encode()
  digest = np.frombuffer(hashlib.sha256(text).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  if (digests == digests[0]).all():
    return
  # They differ: gather the whole settings to say which fields (padded to one length).
  n = int(np.max(multihost_utils.process_allgather(np.int32(len(text)))))
  padded = np.zeros(n, np.uint8)
  padded[:len(text)] = np.frombuffer(text, np.uint8)
  everyone = np.asarray(multihost_utils.process_allgather(padded))
  first = json.loads(bytes(everyone[0]).rstrip(b'\0'))
  lines = []
  for i in range(1, len(everyone)):
    theirs = json.loads(bytes(everyone[i]).rstrip(b'\0'))
    fields = config_differences(first, theirs)
    if fields:
      flat0, flati = cli.flatten(first), cli.flatten(theirs)
      shown = ', '.join(f'{k}: {flat0.get(k, "<unset>")!r} vs {flati.get(k, "<unset>")!r}'
                        for k in fields[:5])
      lines.append(f'process {i} differs from process 0 in {shown}'
                   + (f' and {len(fields) - 5} more' if len(fields) > 5 else ''))
  raise SystemExit('ERROR: the processes disagree on the run settings: ' + '; '.join(lines)
                   + '. Start every process with the same --config, overrides and --workdir.')
