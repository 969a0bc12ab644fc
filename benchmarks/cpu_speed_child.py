"""One measurement of GenSR's CPU speed, run by ``benchmarks/cpu_speed.py`` in a child process
against one gensr source tree (``PYTHONPATH=TREE/src``), so an old commit and the new one are
measured the same way. Uses only APIs that both sides have: load_data, GenSR, TrainSampler,
``loss``/``score``, eval_instances and rank_metrics; the optimizer is the tree's trainer's
(``gensr.train.loop.make_optimizer`` where the tree has it, else torch's AdamW, as the old
trainer used).

Prints one JSON line: training steps/s, scoring prompts/s, the first losses and the metrics
(for the equality check), and the thread settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--cf", required=True)
    ap.add_argument("--model-json", required=True, help="GenSRConfig fields as JSON")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--score-instances", type=int, default=256)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    import gensr
    from gensr.data import load_data
    from gensr.data.batching import TrainSampler, eval_instances
    from gensr.metrics import rank_metrics
    from gensr.models.gensr import GenSR, GenSRConfig

    data = load_data(args.data)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    config = GenSRConfig(**{**json.loads(args.model_json), "cf_path": args.cf})
    model = GenSR(config, data)
    build_s = time.perf_counter() - t0
    model.train()

    # training: fixed batches from the seeded sampler, AdamW, the trainer's clipping
    sampler = TrainSampler(data, args.negatives, seed=args.seed)
    table, order = sampler.epoch(0)
    params = [p for p in model.parameters() if p.requires_grad]
    try:  # the tree's own trainer's optimizer (fused AdamW where torch has it), else plain AdamW
        from gensr.train.loop import make_optimizer
        optimizer = make_optimizer([{"params": params}], 1e-3)
    except ImportError:
        optimizer = torch.optim.AdamW(params, lr=1e-3)
    try:  # the tree's trainer watches for other busy processes (train.threads = auto)
        from gensr.threads import ThreadGuard
        guard = ThreadGuard()
    except ImportError:
        guard = None
    losses, times = [], []
    n_steps = args.warmup_steps + args.train_steps
    for step in range(n_steps):
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        start = time.perf_counter()
        batch = table.make_batch(data, idx, config.max_his_len)
        out = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if guard is not None:
            guard.poll()
        times.append(time.perf_counter() - start)
        losses.append(float(out.loss.detach()))
    timed = times[args.warmup_steps:]

    thread_changes = [] if guard is None else [c[1] for c in guard.changes]
    if guard is not None:  # scoring (gensr evaluate) has no guard: its own thread count
        guard.restore()

    # scoring: the first score_instances test instances (100 candidates each)
    model.eval()
    test = eval_instances(data, "test")
    test = test.subset(np.arange(min(args.score_instances, len(test))))
    try:  # the tree's evaluation polls a ThreadGuard after every batch
        from gensr.threads import guarded
    except ImportError:
        guarded = None
    scores, started = [], None
    with torch.no_grad():
        warm = test.make_batch(data, np.arange(min(8, len(test))), config.max_his_len)
        model.score(warm)
        started = time.perf_counter()
        n_batches = -(-len(test) // args.eval_batch)  # the evaluation's rule for a first look
        watching = guarded("cpu", prime_s=0.2 if n_batches >= 10 else 0.0) \
            if guarded is not None else contextlib.nullcontext()
        with watching as watch:
            for b in range(0, len(test), args.eval_batch):
                batch = test.make_batch(data, np.arange(b, min(b + args.eval_batch, len(test))),
                                        config.max_his_len)
                scores.append(model.score(batch).float())
                if watch is not None:
                    watch.poll()
        score_s = time.perf_counter() - started
    all_scores = torch.cat(scores)
    metrics = rank_metrics(all_scores, torch.from_numpy(test.target_pos))
    prompts = int(test.candidates.size)
    print(json.dumps({
        "gensr": gensr.__version__, "source": gensr.__file__, "threads": torch.get_num_threads(),
        "build_s": round(build_s, 3),
        "train_steps_per_s": len(timed) / sum(timed),
        "train_step_s_median": float(np.median(timed)),
        "losses": losses[:10],
        "score_prompts_per_s": prompts / score_s, "score_s": score_s, "prompts": prompts,
        "metrics": {k: float(v.double().mean()) for k, v in metrics.items()},
        "scores_head": all_scores[:2, :5].tolist(),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "thread_changes": thread_changes,
    }))


if __name__ == "__main__":
    main()
