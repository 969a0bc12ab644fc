"""GenSR on a CPU, an old commit against this tree, measured side by side in one run.

    python benchmarks/cpu_speed.py --data data/scientific --cf data/scientific_cf/cf.safetensors
        [--old REV] [--threads 2] [--rounds 2] [--shared-rounds 1]

The old commit is checked out into a temporary git worktree; each round runs
``benchmarks/cpu_speed_child.py`` once against the old tree and once against this one
(``PYTHONPATH=TREE/src``), alternating, so drift on the machine hits both. Settings: the GenSR
model of ``configs/compare_cpu.yaml`` (scratch T5, d_model 64, max_his_len 10, 6 text tokens,
short prompts), batch 128 with 3 negatives, fixed batches of the seeded sampler. A second pair
of runs with dropout 0 checks that the losses and scores agree (the math is unchanged there;
with dropout on, the length groups draw other dropout masks). ``--shared-rounds`` then runs
each side with another busy process (a one-core spin loop) beside it: the collapse of
oversubscribed OpenMP threads, and what the trainer's ThreadGuard makes of it. Writes
``benchmarks/results/cpu_speed.{json,md}`` and prints the table. Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "benchmarks" / "cpu_speed_child.py"
OLD_DEFAULT = "631a85b"  # main before the CPU speed work (after the correct-results fixes)


def gensr_settings() -> dict:
    """The GenSR model block of configs/compare_cpu.yaml."""
    doc = yaml.safe_load((ROOT / "configs" / "compare_cpu.yaml").read_text())
    return dict(doc["models"]["gensr"]["model"])


def run_child(tree: Path, args: argparse.Namespace, model: dict, steps: int,
              instances: int, shared: bool = False) -> dict:
    """One child measurement; ``shared``: with another busy process (a one-core Python spin
    loop) running beside it the whole time."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(CHILD), "--data", str(args.data), "--cf", str(args.cf),
           "--model-json", json.dumps(model), "--threads", str(args.threads),
           "--train-steps", str(steps), "--score-instances", str(instances)]
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if shared else None
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
    if out.returncode != 0:
        raise SystemExit(f"child failed on {tree}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cf", type=Path, required=True)
    ap.add_argument("--old", default=OLD_DEFAULT, help="git revision to compare against")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--score-instances", type=int, default=256)
    ap.add_argument("--shared-rounds", type=int, default=1,
                    help="rounds with another busy process on one core (0: none)")
    ap.add_argument("--shared-train-steps", type=int, default=40)
    ap.add_argument("--shared-score-instances", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    args.data, args.cf = args.data.resolve(), args.cf.resolve()
    model = gensr_settings()
    rev = subprocess.run(["git", "rev-parse", "--short", args.old], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    new_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="gensr-old-") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), rev], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for side, tree in (("old", old_tree), ("new", ROOT))[:: 1 if r % 2 == 0 else -1]:
                    runs[side].append(run_child(tree, args, model, args.train_steps,
                                                args.score_instances))
                    print(f"round {r + 1} {side}: train "
                          f"{runs[side][-1]['train_steps_per_s']:.2f} steps/s, score "
                          f"{runs[side][-1]['score_prompts_per_s']:.0f} prompts/s", flush=True)
            shared: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.shared_rounds):
                for side, tree in (("old", old_tree), ("new", ROOT))[:: 1 if r % 2 == 0 else -1]:
                    shared[side].append(run_child(tree, args, model, args.shared_train_steps,
                                                  args.shared_score_instances, shared=True))
                    print(f"shared round {r + 1} {side}: train "
                          f"{shared[side][-1]['train_steps_per_s']:.2f} steps/s, score "
                          f"{shared[side][-1]['score_prompts_per_s']:.0f} prompts/s", flush=True)
            no_dropout = {**model, "scratch_dropout": 0.0, "view_dropout": 0.0}
            exact = {side: run_child(tree, args, no_dropout, 5, 64)
                     for side, tree in (("old", old_tree), ("new", ROOT))}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT,
                           check=False, capture_output=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    loss_diff = max(abs(a - b) for a, b in zip(exact["old"]["losses"], exact["new"]["losses"]))
    metric_diff = max(abs(exact["old"]["metrics"][k] - exact["new"]["metrics"][k])
                      for k in exact["old"]["metrics"])
    result = {
        "old": rev, "new": new_rev, "threads": args.threads, "rounds": args.rounds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "settings": {"model": model, "batch_size": 128, "negatives": 3,
                     "train_steps": args.train_steps, "score_instances": args.score_instances},
        "train_steps_per_s": {"old": med("old", "train_steps_per_s"),
                              "new": med("new", "train_steps_per_s")},
        "score_prompts_per_s": {"old": med("old", "score_prompts_per_s"),
                                "new": med("new", "score_prompts_per_s")},
        "equality_dropout0": {"max_loss_diff": loss_diff, "max_metric_diff": metric_diff,
                              "old_losses": exact["old"]["losses"],
                              "new_losses": exact["new"]["losses"],
                              "old_metrics": exact["old"]["metrics"],
                              "new_metrics": exact["new"]["metrics"]},
        "runs": runs,
    }
    for key in ("train_steps_per_s", "score_prompts_per_s"):
        result[key]["ratio"] = result[key]["new"] / result[key]["old"]
    if args.shared_rounds:
        result["shared"] = {
            "what": "one other busy process (a Python spin loop on one core) the whole time",
            "train_steps": args.shared_train_steps,
            "score_instances": args.shared_score_instances, "runs": shared}
        for key in ("train_steps_per_s", "score_prompts_per_s"):
            pair = {side: statistics.median(r[key] for r in shared[side])
                    for side in ("old", "new")}
            result["shared"][key] = {**pair, "ratio": pair["new"] / pair["old"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_speed.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# GenSR CPU speed: {rev} (old) vs {new_rev} (new)", "",
        f"{result['machine']}, {args.threads} torch threads, medians of {args.rounds} "
        "alternating rounds; configs/compare_cpu.yaml's GenSR, batch 128 with 3 negatives.", "",
        "| | old | new | new / old |", "|---|---|---|---|",
        f"| training steps/s | {result['train_steps_per_s']['old']:.2f} | "
        f"{result['train_steps_per_s']['new']:.2f} | "
        f"{result['train_steps_per_s']['ratio']:.2f}x |",
        f"| scoring prompts/s | {result['score_prompts_per_s']['old']:,.0f} | "
        f"{result['score_prompts_per_s']['new']:,.0f} | "
        f"{result['score_prompts_per_s']['ratio']:.2f}x |", "",
        f"Equality with dropout 0 (the math unchanged): max |loss difference| over 5 steps "
        f"{loss_diff:.1e}, max |metric difference| on 64 test instances {metric_diff:.1e}.",
        "With dropout on (the timed runs), the new side draws its dropout masks with "
        "gensr.tensor.dropout (Speed.dropout = fast on CPU): other masks than torch's, so "
        "its losses differ from the old side's; docs/speed.md shows the trained metrics.", "",
    ]
    if args.shared_rounds:
        sh = result["shared"]
        changes = sorted({tuple(r["thread_changes"]) for r in shared["new"]})
        lines += [
            f"**Shared machine** ({args.shared_rounds} round(s); another busy process on one "
            f"core the whole time; {args.shared_train_steps} training steps, "
            f"{args.shared_score_instances} scored instances):", "",
            "| | old | new | new / old |", "|---|---|---|---|",
            f"| training steps/s | {sh['train_steps_per_s']['old']:.2f} | "
            f"{sh['train_steps_per_s']['new']:.2f} | {sh['train_steps_per_s']['ratio']:.2f}x |",
            f"| scoring prompts/s | {sh['score_prompts_per_s']['old']:,.0f} | "
            f"{sh['score_prompts_per_s']['new']:,.0f} | "
            f"{sh['score_prompts_per_s']['ratio']:.2f}x |", "",
            "The new side polls gensr.threads.ThreadGuard as the library does: after every "
            "training step (train.threads = auto) and after every scored batch of 64 "
            "instances (the evaluation's guard, restored after); thread counts it set in "
            f"training: {[list(c) for c in changes]}.", "",
        ]
    (args.out / "cpu_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
