#!/usr/bin/env bash
# The README's first command, timed cold, against one 300-epoch `dc` evaluation at 32 px on the same machine.
#
#   benchmarks/first_result.sh [ROUNDS]        (default 2; ~5 min per round on a 2-core CPU)
#
# Wall seconds are what a user waits; CPU seconds (user + system, all threads) are what the job costs, and
# they hold up far better than wall time when other work shares the machine. Each round runs, back to back: the scale job (random, digits, IPC 10, one evaluation seed, the `dc` card at
# 32 px, set metrics off: one 300-epoch ConvNet-3 training at 32 px), then the README's main job
# (`ddbench run --method random --dataset digits --ipc 10 --eval-seeds 0,1,2`) with an empty cache and a fresh
# run folder. Prints one line per job and the ratio main / scale (the mean of the scale jobs around it).
# DDBENCH (default: ddbench) is the command, so a checkout of another version can be timed the same way.
# SCALE_SET (default: protocol.resolution=32) is the override that makes the scale job a 32-px evaluation.
set -euo pipefail
rounds=${1:-2}
ddbench=${DDBENCH:-ddbench}
scale_set=${SCALE_SET:-protocol.resolution=32}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset DDBENCH_NO_PROGRESS DDBENCH_SET_METRICS

timed() {  # timed NAME CMD... : runs CMD with an empty cache and run folder; prints "<wall s> <cpu s>"
  local name=$1; shift
  rm -rf "$work/cache" "$work/out"
  DDBENCH_CACHE="$work/cache" /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" --out "$work/out" \
    > "$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; kill $$; }
  awk '{printf "%.1f %.1f\n", $1, $2 + $3}' "$work/$name.time"
}

scale=($ddbench run --method random --dataset digits --ipc 10 --eval-seeds 0 --set-metrics off --set "$scale_set")
main_job=($ddbench run --method random --dataset digits --ipc 10 --eval-seeds 0,1,2)
ratio() { python3 -c "print(f'{$1 / (($2 + $3) / 2):.2f}')"; }

read -r s_wall s_cpu < <(timed scale0 "${scale[@]}")
echo "scale (one 300-epoch dc evaluation, 32 px): wall ${s_wall} s, cpu ${s_cpu} s  (load $(cut -d' ' -f1-3 /proc/loadavg))"
for r in $(seq 1 "$rounds"); do
  read -r m_wall m_cpu < <(timed main$r "${main_job[@]}")
  echo "main job, cold: wall ${m_wall} s, cpu ${m_cpu} s  (load $(cut -d' ' -f1-3 /proc/loadavg))"
  read -r t_wall t_cpu < <(timed scale$r "${scale[@]}")
  echo "scale (one 300-epoch dc evaluation, 32 px): wall ${t_wall} s, cpu ${t_cpu} s  (load $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "round $r: main / scale = $(ratio "$m_wall" "$s_wall" "$t_wall") (wall), $(ratio "$m_cpu" "$s_cpu" "$t_cpu") (cpu)"
  grep -E "in [0-9.]+s|acc" "$work/main$r.log" | tail -n 8 | sed 's/^/    /'
  s_wall=$t_wall s_cpu=$t_cpu
done
