"""The headline command's path on a CPU: every diffusion and soft-label method on `nette` at IPC 1 through the
`ddbench run` command line, in the real shapes (DiT-XL/2 with random weights, the sd-vae-ft-mse AutoencoderKL
architecture, 256 px generation, 224 px evaluation) with tiny step counts, so that a GPU hour is never spent on
a refusal, a typo or a shape error.

    python benchmarks/cpu_rehearsal.py OUT                     # tree + weights (imagenet_tree.py), then every method
    python benchmarks/cpu_rehearsal.py OUT --methods dit mgd3  # some methods only
    python benchmarks/cpu_rehearsal.py OUT --timeout-min 25    # per-method cap (default 25 min)

Writes OUT/rehearsal/ (the ImageNet-format tree and the random weights, made once), OUT/runs/results.db and
OUT/cpu.jsonl: one JSON line per method with `finished` (exit 0 within the cap), `timed_out`, `wall_s` and
`peak_rss_mb` (the largest resident set of the run's processes, from the kernel's rusage; also for a run that
was stopped at its cap). One method at a time: DiT-XL/2 fine-tuning alone (minimax) holds ~12 GiB.
Random weights: time, memory and plumbing, never quality. The figures of a 2-core machine are in
docs/diffusion.md ("The CPU rehearsal"). The smaller-shape version of the same commands runs in every CI
(tests/test_rehearsal.py), which imports REHEARSAL from here.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (method, ipc, method overrides): tiny step counts, every method-specific phase still run once. IPC 1 everywhere
# except acs: its first curriculum is unguided, so IPC 2 with schedule [1, 1] is the smallest run that guides.
REHEARSAL = [
    ("dit", 1, ["steps=4"]),
    ("mgd3", 1, ["sampling.steps=4"]),  # t_stop 25/50 -> index > 2 of 4: one guided step
    ("minimax", 1, ["steps=4", "finetune.steps=2"]),
    ("igd", 1, ["sampling.steps=4", "surrogate.epochs=1", "checkpoints=[0,1]", "grad_ipc=3", "grad_chunk=3",
                "low=3", "high=3"]),  # guided at the noisiest of 4 respaced steps, through 2 trajectory checkpoints
    ("acs", 2, ["sampling.steps=4", "schedule=[1,1]", "disc.epochs=1"]),
    ("sre2l", 1, ["teacher_recipe={epochs: 1}", "iterations=2"]),
    ("cudd", 1, ["teacher_recipe={epochs: 1}", "iterations=2", "student_epochs=1"]),
]
SOFT_LABEL = {"sre2l", "cudd"}  # scored with their soft labels (protocol fkd), the others under idc
HARD_PROTOCOL = ["protocol.epochs=1", "protocol.eval_points=1"]  # idc: one epoch, tested once
# fkd: one epoch (its last epoch is always tested); its teacher, trained for one epoch on 3 images per class, is
# not held to 3x chance.
SOFT_PROTOCOL = ["protocol.epochs=1", "protocol.teacher.recipe={epochs: 1}", "protocol.teacher.min_acc_x_chance=0"]


def command(method: str, ipc: int, overrides: list[str], out: Path, weights: dict, device: str = "cpu") -> list[str]:
    """The `ddbench run` arguments of one rehearsal method (the program name not included).

    `weights`: {"dit": path, "vae": path, "imagenet_root": path}. The tree holds a few images per class, not
    ILSVRC-2012's 732-1300 / 50, so the run opens the count gate explicitly (every record then says so)."""
    args = ["run", "--method", method, "--dataset", "nette", "--ipc", str(ipc), "--out", str(out),
            "--dit", str(weights["dit"]), "--vae", str(weights["vae"]),
            "--imagenet-root", str(weights["imagenet_root"]),
            "--device", device, "--allow-nonstandard-subset"]
    if method in SOFT_LABEL:
        args += ["--protocol", "fkd"]
    sets = list(overrides) + (SOFT_PROTOCOL if method in SOFT_LABEL else HARD_PROTOCOL)
    return args + [a for s in sets for a in ("--set", s)]


def run_capped(argv: list[str], timeout_s: float, log_path: Path) -> dict:
    """Run `argv` in its own process group; stop the group at `timeout_s`. Wall time and peak RSS (MB) of the
    process and its descendants (wait4's rusage: the kernel folds each reaped child's peak into its parent's)."""
    t0, deadline = time.perf_counter(), time.perf_counter() + timeout_s
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(1.0)
    proc.returncode = status  # reaped by wait4 above: Popen must not wait for it again
    code = os.waitstatus_to_exitcode(status)
    return {"finished": code == 0 and not timed_out, "timed_out": timed_out, "exit_code": code,
            "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def ensure_tree(root: Path, python: str) -> dict:
    """The tree and the random weights of imagenet_tree.py, written once (they take minutes and ~6 GB)."""
    weights = {"dit": root / "DiT-XL-2-256x256.pt", "vae": root / "sd-vae-ft-mse", "imagenet_root": root / "imagenet"}
    if not (weights["vae"] / "config.json").exists():
        subprocess.run([python, str(HERE / "imagenet_tree.py"), str(root), "--train", "3", "--val", "1"], check=True)
    return weights


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--methods", nargs="+", default=[m for m, _, _ in REHEARSAL],
                   choices=[m for m, _, _ in REHEARSAL], help="methods to run, in this order")
    p.add_argument("--timeout-min", type=float, default=25.0, help="cap per method, minutes")
    args = p.parse_args(argv)
    os.environ.setdefault("DDBENCH_NO_PROGRESS", "1")
    os.environ.setdefault("DDBENCH_SET_METRICS", "off")  # as the GPU rehearsal: no feature network per method
    args.out.mkdir(parents=True, exist_ok=True)
    weights = ensure_tree(args.out / "rehearsal", sys.executable)
    table = {m: (ipc, over) for m, ipc, over in REHEARSAL}
    rows = []
    for method in args.methods:
        ipc, over = table[method]
        cli = [sys.executable, "-m", "ddbench.cli"] + command(method, ipc, over, args.out / "runs", weights)
        print(f"[{time.strftime('%H:%M:%S')}] {method} at IPC {ipc}", file=sys.stderr, flush=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        row = {"method": method, "dataset": "nette", "ipc": ipc, "started": started}
        row |= run_capped(cli, args.timeout_min * 60, args.out / f"{method}.log")
        with open(args.out / "cpu.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
