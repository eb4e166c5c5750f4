#!/usr/bin/env bash
# launch/local.sh N ARGS...: N processes of `python -m rstg_jax.main ARGS...` on this
# machine, coordinated through jax.distributed on localhost.
#
#   launch/local.sh 2 --config=configs/syncmnist_quick.py --workdir=runs/quick2
#
# Each process gets --coordinator_address=localhost:PORT --num_processes=N
# --process_id=I and the devices JAX sees in it (one CPU device each on CPU; set
# XLA_FLAGS=--xla_force_host_platform_device_count=K for K fake devices per process).
# On CPU the processes talk through JAX's CPU collectives (gloo). Only process 0 prints
# the run's log; the others' output goes to WORKDIR/process_I.log (or ./process_I.log
# when no --workdir is among ARGS). Running the same command again resumes the run.
#
# Environment:
#   PORT=12345        coordinator port (default: a free port picked here)
#   PYTHON=python3    interpreter (default: python)
#   DRY_RUN=1         print the N commands instead of running them
#
# Exits with the first non-zero exit status of a process, after stopping the others;
# Ctrl-C stops them all.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "usage: launch/local.sh N ARGS..." >&2
  exit 2
fi
N=$1
shift
PYTHON=${PYTHON:-python}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}

LOGDIR=.
for arg in "$@"; do
  case $arg in
    --workdir=*) LOGDIR=${arg#--workdir=} ;;
  esac
done

commands=()
for ((i = 0; i < N; i++)); do
  cmd=("$PYTHON" -m rstg_jax.main "--coordinator_address=localhost:$PORT"
       "--num_processes=$N" "--process_id=$i" "$@")
  commands+=("$(printf '%q ' "${cmd[@]}")")
done

if [[ -n ${DRY_RUN:-} ]]; then
  for ((i = 0; i < N; i++)); do
    if ((i == 0)); then echo "${commands[$i]}"; else echo "${commands[$i]}> $LOGDIR/process_$i.log 2>&1"; fi
  done
  exit 0
fi

mkdir -p "$LOGDIR"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < N; i++)); do
  if ((i == 0)); then
    eval "${commands[$i]}" &
  else
    eval "${commands[$i]}" > "$LOGDIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

# The first process to fail stops the others (they would wait for it until a timeout).
status=0
for ((k = 0; k < N; k++)); do
  rc=0
  wait -n || rc=$?
  if ((rc != 0)); then
    status=$rc
    stop_all
    break
  fi
done
wait || true
if ((status != 0)); then
  for ((i = 1; i < N; i++)); do
    if [[ -s $LOGDIR/process_$i.log ]]; then
      echo "--- last lines of $LOGDIR/process_$i.log:" >&2
      tail -n 5 "$LOGDIR/process_$i.log" >&2
    fi
  done
fi
exit $status
