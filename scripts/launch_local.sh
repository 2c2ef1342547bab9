#!/usr/bin/env bash
# N JAX processes on this machine, one simulated host each, joined over loopback:
#   scripts/launch_local.sh N [main.py args...]
# Each process gets --coordinator_address/--num_processes/--process_id and, on CPU, its own
# simulated devices (DEVICES_PER_PROCESS, default 4; XLA_FLAGS). SIGINT/SIGTERM go to every
# process; the script exits non-zero as soon as any process fails (and stops the others).
# PORT (default: a free one) sets the coordinator's port; process I's output also goes to
# LOG_DIR/process_I.log when LOG_DIR is set.
set -uo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [main.py args...]" >&2
  exit 2
fi
num=$1; shift
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
devices="${DEVICES_PER_PROCESS:-4}"
# Our device count replaces any the caller's XLA_FLAGS already set.
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<< "${XLA_FLAGS:-}")"
port="${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
}
trap 'stop_all; wait; exit 130' INT
trap 'stop_all; wait; exit 143' TERM

for ((i = 0; i < num; i++)); do
  cmd=(env "XLA_FLAGS=$xla_flags --xla_force_host_platform_device_count=$devices"
       "$python" "$here/main.py" "$@" "--coordinator_address=127.0.0.1:$port"
       "--num_processes=$num" "--process_id=$i")
  if [[ -n "${LOG_DIR:-}" ]]; then
    mkdir -p "$LOG_DIR"
    "${cmd[@]}" > >(tee "$LOG_DIR/process_$i.log") 2>&1 &
  else
    "${cmd[@]}" &
  fi
  pids+=($!)
done

status=0
remaining=$num
while ((remaining > 0)); do
  wait -n "${pids[@]}"
  rc=$?
  remaining=$((remaining - 1))
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "launch_local.sh: a process exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit $status
