"""gensr's baselines checked against reference implementations (the "verdict" issue).

SASRec and LightGCN are checked against RecBole (the ``recbole`` package on PyPI) on the same
leave-one-out split of amazon-scientific, under full ranking, with one evaluator applied to
both sides' score matrices (gensr's own ``masked_pairs`` + ``rank_metrics``) beside each
tool's own evaluator. UniSAR and TEM are compared with their official repositories (see
``benchmarks/results/reference_check.md``: what could and could not be run, and why).

Nothing here imports RecBole or any reference code at import time, and nothing of theirs is
in this file: the RecBole side runs in a separate virtual environment, started as a
subprocess (``recbole-worker``) that imports ``recbole`` only inside its function.

Steps (``--work`` is a folder outside the repository; default ``/work/refcheck/work``)::

    # 0. the reference environment and checkouts (once, outside the repository)
    python3 -m venv /work/refcheck/venv
    /work/refcheck/venv/bin/pip install torch==2.13.0 "numpy<2" "pandas<2.2" "scipy<1.12" \\
        tqdm colorlog==4.7.2 colorama==0.4.4 "scikit-learn<1.6" pyyaml tensorboard thop \\
        tabulate texttable psutil
    /work/refcheck/venv/bin/pip install --no-deps recbole==1.2.1   # ray, plotly: not needed
    # clones of TengShi-RUC/UniSAR and kepingbi/ProdSearch, exported at the checked commits
    git -C UNISAR_CLONE archive 1a14a24 | tar -x -C /work/refcheck/unisar
    git -C PRODSEARCH_CLONE archive 449335b | tar -x -C /work/refcheck/prodsearch
    # 1. export the canonical split: RecBole atomic file + a rec-only gensr data directory
    python benchmarks/reference_check.py export --data data/scientific
    # 2. SASRec and LightGCN, gensr side (seeds 0 and 1)
    python benchmarks/reference_check.py gensr-sasrec --kind rec --seed 0
    python benchmarks/reference_check.py gensr-sasrec --kind mixed --seed 0
    python benchmarks/reference_check.py gensr-lightgcn --seed 0
    # 3. the same, RecBole side (needs the environment of step 0)
    python benchmarks/reference_check.py recbole --model SASRec --loss bce --seed 0  # bpr, ce
    python benchmarks/reference_check.py recbole --model LightGCN --seed 0
    # 4. UniSAR and TEM: the same weights in gensr's model and in the official code
    gensr train --model unisar --data data/scientific --out WORK/runs/unisar-short \\
        --set max_steps=200 --set eval_every=200 --set eval_max_instances=300
    python benchmarks/reference_check.py unisar-export --n 300 --run WORK/runs/unisar-short
    python benchmarks/reference_check.py unisar-official --checkout /work/refcheck/unisar
    gensr train --model tem --data data/scientific --out WORK/runs/tem-short \\
        --set max_steps=300 --set eval_every=300 --set eval_max_instances=300
    python benchmarks/reference_check.py tem-export --n 300 --run WORK/runs/tem-short
    python benchmarks/reference_check.py tem-official --checkout /work/refcheck/prodsearch
    # 5. one evaluator over every score matrix -> benchmarks/results/reference_check.{md,json}
    python benchmarks/reference_check.py report

Every step runs on one CPU thread (``OMP_NUM_THREADS=1``) and writes its score matrix
(``WORK/scores/NAME.npy``: rows = canonical test users of ``--data``, columns = canonical
items, float32) and a card (``WORK/scores/NAME.json``: command, settings, the tool's own
metrics). ``report`` ranks every matrix under two masking rules:

* ``gensr``: gensr's ``--full`` rule, the user's items of the train and valid splits masked
  (both behaviours), the target never (``gensr.eval.protocol.masked_pairs``);
* ``none``: nothing masked but the padding item (RecBole's rule for *sequential* models:
  its full-sort loader passes no history index for them).

RecBole's rule for *general* models (LightGCN) is the user's train+valid items minus the
test positives: the same as gensr's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_WORK = Path("/work/refcheck/work")
DATASET = "sci"  # the RecBole dataset name (WORK/recbole/sci/sci.inter)
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"

# gensr's SASRec settings (configs/sasrec.yaml) and the RecBole settings that match them
SASREC = {"max_his_len": 50, "hidden": 64, "n_layers": 2, "n_heads": 2, "ffn_mult": 1,
          "dropout": 0.2, "n_negatives": 3, "batch_size": 128, "lr": 1e-3}
RECBOLE_SASREC = {
    "hidden_size": 64, "n_layers": 2, "n_heads": 2, "inner_size": 64,
    "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "gelu",
    "MAX_ITEM_LIST_LENGTH": 50, "initializer_range": 0.02, "learning_rate": 1e-3,
    "epochs": 20, "stopping_step": 3, "valid_metric": "NDCG@10", "eval_batch_size": 1024,
}
# gensr pretrain-cf defaults and the RecBole LightGCN settings that match them. gensr's L2
# is torch_geometric's lambda * ||E_batch||^2 / B; RecBole's with require_pow is
# reg_weight * ||E_batch||^2 / B / 2, so reg_weight = 2 * lambda.
CF = {"dim": 64, "layers": 2, "lr": 0.02, "batch_size": 4096, "weight_decay": 1e-3,
      "epochs": 60, "patience": 10, "min_epochs": 10}
RECBOLE_LIGHTGCN = {
    "embedding_size": 64, "n_layers": 2, "learning_rate": 0.02, "train_batch_size": 4096,
    "reg_weight": 2e-3, "require_pow": True, "epochs": 60, "stopping_step": 10,
    "valid_metric": "Recall@20", "eval_batch_size": 409600,
    "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                              "dynamic": False, "candidate_num": 0},
}


def env1() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GENSR_PROGRESS="off")
    return env


def run(cmd: list[str], log: Path | None = None) -> float:
    """Run ``cmd`` on one thread (output to ``log`` if given); seconds taken."""
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    if log is None:
        subprocess.run(cmd, check=True, env=env1())
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            subprocess.run(cmd, check=True, env=env1(), stdout=fh, stderr=subprocess.STDOUT)
    return time.time() - start


def gensr_cmd() -> list[str]:
    return [sys.executable, "-c", "from gensr.cli import main; main()"]


def write_card(work: Path, name: str, card: dict) -> None:
    (work / "scores").mkdir(parents=True, exist_ok=True)
    (work / "scores" / f"{name}.json").write_text(json.dumps(card, indent=2))


# --- 1. export ------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> None:
    """The canonical split's rec interactions as (a) one RecBole atomic file whose leave-one-
    out by time (``LS: valid_and_test``, ``order: TO``) is gensr's split, and (b) a rec-only
    gensr data directory (``csv`` adapter, leave-one-out) for SASRec on the same input."""
    import polars as pl

    from gensr.data.dataset import load_data

    data = load_data(args.data)
    work: Path = args.work
    inter = data.interactions
    rec = inter.filter(pl.col("behaviour") == "rec").sort("user_id", "seq")
    # (a) RecBole: tokens are gensr's canonical ids, timestamp = the per-user event order
    out = work / "recbole" / DATASET
    out.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{s}" for u, i, s in rec.select("user_id", "item_id", "seq").iter_rows()]
    (out / f"{DATASET}.inter").write_text("\n".join(lines) + "\n")
    # (b) rec-only csv -> gensr data directory
    users = data.user_orig_id
    items = data.item_orig_id
    csv = work / "csv_rec"
    csv.mkdir(parents=True, exist_ok=True)
    rows = ["user,item,timestamp,behaviour,query"]
    rows += [f"{users[u]},{items[i]},{1_000_000_000 + s},rec,"
             for u, i, s in rec.select("user_id", "item_id", "seq").iter_rows()]
    (csv / "interactions.csv").write_text("\n".join(rows) + "\n")
    it = pl.read_parquet(Path(args.data) / "items.parquet").sort("item_id")
    it.select(pl.col("orig_id").alias("item"), "text", "category").write_csv(csv / "items.csv")
    rec_dir = work / "data_rec"
    cmd = [*gensr_cmd(), "data", "prepare", "csv", "--raw", str(csv), "--out", str(rec_dir),
           "--split", "loo"]
    if rec_dir.exists():
        cmd.append("--overwrite")
    run(cmd, work / "logs" / "prepare_rec.log")
    # the same split? (user orig id, item orig id, split, position) on both sides
    mine = load_data(rec_dir)
    a = rec.select(pl.col("user_id").map_elements(lambda u: users[u], return_dtype=pl.String)
                   .alias("u"), pl.col("item_id").map_elements(lambda i: items[i],
                   return_dtype=pl.String).alias("i"), "split")
    mu, mi = mine.user_orig_id, mine.item_orig_id
    b = mine.interactions.sort("user_id", "seq").select(
        pl.col("user_id").map_elements(lambda u: mu[u], return_dtype=pl.String).alias("u"),
        pl.col("item_id").map_elements(lambda i: mi[i], return_dtype=pl.String).alias("i"),
        "split")
    a = a.sort("u", maintain_order=True)
    b = b.sort("u", maintain_order=True)
    same = a.shape == b.shape and a.equals(b)
    check = {"rec_interactions": rec.height, "users": data.n_users, "items": data.n_items,
             "rec_only_dir": str(rec_dir), "same_split_and_order": bool(same),
             "splits": {s: int(n) for s, n in rec.group_by("split").len().iter_rows()}}
    (work / "export.json").write_text(json.dumps(check, indent=2))
    print(json.dumps(check, indent=2))
    if not same:
        raise SystemExit("the rec-only data directory's split differs from the canonical one")


# --- 2. gensr side --------------------------------------------------------------------------
def test_rec_table(data, split: str = "test"):
    """gensr's rec evaluation instances of ``split`` and their targets (one per user)."""
    from gensr.eval.protocol import full_instances

    return full_instances(data, split, ("rec",))


def full_scores(model, data, batch_size: int = 256):
    """(users, targets, scores) of a gensr model's ``score_all`` on the test rec instances."""
    import numpy as np
    import torch

    table, targets = test_rec_table(data)
    out = np.zeros((len(table), data.n_items + 1), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(table), batch_size):
            idx = np.arange(start, min(start + batch_size, len(table)))
            batch = table.make_batch(data, idx, model.history_window).to(model.device)
            out[idx] = model.score_all(batch).float().cpu().numpy()
    return table.user.copy(), targets, out


def to_canonical(users, targets, scores, src_data, ref_data):
    """Rows and columns of a score matrix made on ``src_data`` re-indexed to ``ref_data``'s
    canonical ids (by original ids); rows sorted by canonical user."""
    import numpy as np

    uidx, iidx = ref_data.user_index, ref_data.item_index
    su, si = src_data.user_orig_id, src_data.item_orig_id
    rows = np.array([uidx[su[u]] for u in users])
    tg = np.array([iidx[si[t]] for t in targets])
    cols = np.full(ref_data.n_items + 1, -1)
    for i in range(1, src_data.n_items + 1):
        cols[iidx[si[i]]] = i
    if (cols[1:] < 0).any():
        raise SystemExit("an item of the reference data is missing from the source data")
    cols[0] = 0
    mat = scores[:, cols]
    order = np.argsort(rows)
    return rows[order], tg[order], mat[order]


def save_scores(work: Path, name: str, users, targets, scores) -> None:
    import numpy as np

    (work / "scores").mkdir(parents=True, exist_ok=True)
    np.save(work / "scores" / f"{name}.npy", scores.astype(np.float32))
    np.savez(work / "scores" / f"{name}.ids.npz", users=users, targets=targets)


def cmd_gensr_sasrec(args: argparse.Namespace) -> None:
    import torch

    from gensr.data.dataset import load_data
    from gensr.runs import load_run

    torch.set_num_threads(1)
    work: Path = args.work
    data_dir = work / "data_rec" if args.kind == "rec" else Path(args.data)
    name = f"gensr-sasrec-{args.kind}-s{args.seed}{args.tag}"
    run_dir = work / "runs" / name
    train = [*gensr_cmd(), "train", "--model", "sasrec", "--data", str(data_dir), "--out",
             str(run_dir), "--config", str(ROOT / "configs" / "sasrec.yaml"),
             "--set", f"seed={args.seed}", "--set", "threads=1", "--set", "progress=false",
             *sum((["--set", s] for s in args.set), [])]
    seconds = 0.0
    if not (run_dir / "model.safetensors").exists():
        seconds = run(train, work / "logs" / f"{name}.train.log")
    evaluate = [*gensr_cmd(), "evaluate", str(run_dir), "--full", "--split", "test"]
    run(evaluate, work / "logs" / f"{name}.eval.log")
    own = json.loads((run_dir / "metrics_test_full.json").read_text())
    model, data = load_run(run_dir, device="cpu")
    users, targets, scores = full_scores(model, data)
    ref = load_data(args.data)
    users, targets, scores = to_canonical(users, targets, scores, data, ref)
    save_scores(work, name, users, targets, scores)
    info = json.loads((run_dir / "run.json").read_text())
    write_card(work, name, {
        "side": "gensr", "model": "sasrec", "input": args.kind, "seed": args.seed,
        "commands": [" ".join(["gensr", *train[3:]]), " ".join(["gensr", *evaluate[3:]])],
        "data": str(data_dir), "train_seconds": info.get("wall_time_s", round(seconds, 1)),
        "train_instances": info.get("train_instances"), "best_valid": info.get("best_valid"),
        "own_metrics_test_full": own.get("rec", own),
        "best_step": info.get("best_step"), "epochs": info.get("epochs"),
        "stop_reason": info.get("stop_reason"), "model_config": info.get("model_config"),
        "train_config": {k: info.get("train_config", {}).get(k) for k in (
            "n_negatives", "batch_size", "lr", "weight_decay", "warmup_steps", "max_epochs",
            "grad_clip", "patience", "metric", "eval_fraction", "seed")}})


def cmd_gensr_lightgcn(args: argparse.Namespace) -> None:
    import torch

    from gensr.runs import load_run

    torch.set_num_threads(1)
    work: Path = args.work
    name = f"gensr-lightgcn-s{args.seed}{args.tag}"
    cf = work / "runs" / f"cf-s{args.seed}{args.tag}" / "cf.safetensors"
    pretrain = [*gensr_cmd(), "pretrain-cf", str(args.data), "--out", str(cf), "--seed",
                str(args.seed), "--device", "cpu", "--no-progress", *args.cf_arg]
    seconds = 0.0
    if not cf.exists():
        seconds = run(pretrain, work / "logs" / f"{name}.pretrain.log")
    run_dir = work / "runs" / name
    make = [*gensr_cmd(), "train", "--model", "lightgcn", "--data", str(args.data), "--out",
            str(run_dir), "--set", f"cf_path={cf}"]
    if not (run_dir / "run.json").exists():
        run(make, work / "logs" / f"{name}.make.log")
    evaluate = [*gensr_cmd(), "evaluate", str(run_dir), "--full", "--split", "test"]
    run(evaluate, work / "logs" / f"{name}.eval.log")
    own = json.loads((run_dir / "metrics_test_full.json").read_text())
    model, data = load_run(run_dir, device="cpu")
    users, targets, scores = full_scores(model, data)
    save_scores(work, name, users, targets, scores)
    card = json.loads(cf.with_suffix(".json").read_text())
    write_card(work, name, {
        "side": "gensr", "model": "lightgcn", "seed": args.seed,
        "commands": [" ".join(["gensr", *c[3:]]) for c in (pretrain, make, evaluate)],
        "train_seconds": round(seconds, 1), "own_metrics_test_full": own.get("rec", own),
        "best_epoch": card.get("best_epoch"), "epochs_run": card.get("epochs_run"),
        "settings": card.get("settings"), "fallback": card.get("fallback"),
        "valid": card.get("valid")})


# --- 3. RecBole side ------------------------------------------------------------------------
def cmd_recbole(args: argparse.Namespace) -> None:
    """Start the worker in the reference environment, then map its scores to gensr ids."""
    work: Path = args.work
    name = (f"recbole-{args.model.lower()}" + (f"-{args.loss}" if args.model == "SASRec"
                                                else "")
            + ("-jointinit" if args.init == "joint" else "") + f"-s{args.seed}")
    cmd = [args.python, str(Path(__file__).resolve()), "recbole-worker", "--work", str(work),
           "--model", args.model, "--loss", args.loss, "--seed", str(args.seed),
           "--name", name, "--init", args.init]
    seconds = run(cmd, work / "logs" / f"{name}.log")
    card = json.loads((work / "scores" / f"{name}.json").read_text())
    card["seconds"] = round(seconds, 1)
    card["commands"] = [
        "python benchmarks/reference_check.py recbole --python " + args.python + " --model "
        + args.model + (f" --loss {args.loss}" if args.model == "SASRec" else "")
        + (" --init joint" if args.init == "joint" else "") + f" --seed {args.seed}"]
    write_card(work, name, card)


def cmd_recbole_worker(args: argparse.Namespace) -> None:  # runs in the RecBole venv
    import numpy as np
    import torch

    torch.set_num_threads(1)
    _load = torch.load

    def load(*a, **k):  # RecBole 1.2.1's checkpoints hold its Config: torch >= 2.6 refuses
        k.setdefault("weights_only", False)  # them by default
        return _load(*a, **k)

    torch.load = load
    import torch.nn.functional as F
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    work: Path = args.work.resolve()
    os.chdir(work)  # RecBole's logger writes ./log/
    common = {
        "data_path": str(work / "recbole"), "checkpoint_dir": str(work / "recbole_saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [10, 20], "use_gpu": False, "seed": args.seed,
        "reproducibility": True, "show_progress": False, "worker": 0, "state": "INFO",
    }
    if args.model == "SASRec":
        settings = dict(RECBOLE_SASREC)
        if args.loss == "ce":
            settings.update(loss_type="CE", train_neg_sample_args=None, train_batch_size=128)
        else:  # bpr and bce: 3 sampled negatives per positive, 128 positives a batch
            settings.update(loss_type="BPR", train_batch_size=3 * 128,
                            train_neg_sample_args={"distribution": "uniform", "sample_num": 3,
                                                   "alpha": 1.0, "dynamic": False,
                                                   "candidate_num": 0})
        base = SASRec
    else:
        settings = dict(RECBOLE_LIGHTGCN)
        base = LightGCN
    config = Config(model=base, dataset=DATASET, config_dict={**common, **settings})
    init_logger(config)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])

    if args.model == "SASRec" and args.loss in ("bce", "bpr"):
        class SASRecShared(SASRec):
            """RecBole's SASRec; its pairwise loader repeats each positive row once per
            sampled negative (block-tiled), and RecBole encodes every copy: here the
            sequence is encoded once per positive and shared by its negatives (the copies'
            encodings differ only in their dropout masks; 3x less work on this CPU).
            ``bce``: gensr's loss, the positives' mean BCE + the negatives' mean BCE
            (each positive appears once per negative, so its mean is unchanged);
            ``bpr``: RecBole's own BPR loss."""

            def calculate_loss(self, interaction):
                items = interaction[self.ITEM_SEQ]
                lens = interaction[self.ITEM_SEQ_LEN]
                n, k = len(items), 3
                m = n // k
                if n % k == 0 and torch.equal(items[:m].repeat(k, 1), items):
                    seq = self.forward(items[:m], lens[:m]).repeat(k, 1)
                else:
                    seq = self.forward(items, lens)
                pos = (seq * self.item_embedding(interaction[self.POS_ITEM_ID])).sum(-1)
                neg = (seq * self.item_embedding(interaction[self.NEG_ITEM_ID])).sum(-1)
                if args.loss == "bpr":
                    return self.loss_fct(pos, neg)
                return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                        + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))

        model = SASRecShared(config, train_data.dataset)
    else:
        model = base(config, train_data.dataset)
    if args.model == "LightGCN" and args.init == "joint":
        # ablation: torch_geometric's initialisation (gensr's): xavier-uniform over ONE
        # (users + items) x dim table instead of RecBole's two separate tables
        n = model.user_embedding.num_embeddings + model.item_embedding.num_embeddings
        bound = (6.0 / (n + model.latent_dim)) ** 0.5
        with torch.no_grad():
            model.user_embedding.weight.uniform_(-bound, bound)
            model.item_embedding.weight.uniform_(-bound, bound)
    trainer = Trainer(config, model)
    start = time.time()
    best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True,
                                                show_progress=False)
    seconds = time.time() - start
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    model = trainer.model.eval()

    # every test user's full score row, re-indexed to gensr's canonical ids (the tokens)
    utok = dataset.field2id_token["user_id"]
    itok = dataset.field2id_token["item_id"]
    n_items = max(int(t) for t in itok[1:])
    cols = np.zeros(n_items + 1, dtype=np.int64)  # canonical item -> RecBole internal id
    for internal, tok in enumerate(itok):
        if internal:
            cols[int(tok)] = internal
    users, targets, rows = [], [], []
    with torch.no_grad():
        if args.model == "SASRec":
            for batch in test_data:
                inter = batch[0]
                s = model.full_sort_predict(inter).view(len(inter), -1).numpy()
                users += [int(utok[u]) for u in inter["user_id"].tolist()]
                targets += [int(itok[i]) for i in inter["item_id"].tolist()]
                rows.append(s[:, cols])
        else:
            user_e, item_e = model.forward()
            full = (user_e @ item_e.T).numpy()
            split = test_data.dataset
            for u, i in zip(split.inter_feat["user_id"].tolist(),
                            split.inter_feat["item_id"].tolist()):
                users.append(int(utok[u]))
                targets.append(int(itok[i]))
            internal = np.array([dataset.field2token_id["user_id"][str(u)] for u in users])
            rows.append(full[internal][:, cols])
    scores = np.concatenate(rows).astype(np.float32)
    scores[:, 0] = 0.0
    users_a, targets_a = np.array(users), np.array(targets)
    order = np.argsort(users_a, kind="stable")
    (work / "scores").mkdir(parents=True, exist_ok=True)
    np.save(work / "scores" / f"{args.name}.npy", scores[order])
    np.savez(work / "scores" / f"{args.name}.ids.npz", users=users_a[order],
             targets=targets_a[order])
    card = {
        "side": "recbole", "model": args.model, "seed": args.seed,
        "loss": args.loss if args.model == "SASRec" else "BPR", "init": args.init,
        "recbole_version": __import__("recbole").__version__, "torch": torch.__version__,
        "settings": {**settings, "eval_args": common["eval_args"]},
        "train_seconds": round(seconds, 1), "best_valid": float(best_valid),
        "best_valid_result": {k: float(v) for k, v in best_valid_result.items()},
        "own_metrics_test_full": {k: float(v) for k, v in test_result.items()},
        "n_test_rows": int(len(users_a)), "n_train_rows": int(len(train_data.dataset)),
    }
    (work / "scores" / f"{args.name}.json").write_text(json.dumps(card, indent=2))
    print(json.dumps(card, indent=2))


# --- UniSAR: the same weights in gensr's model and in the official code ----------------------
UNISAR_REPO, UNISAR_COMMIT = "TengShi-RUC/UniSAR", "1a14a246066cd1aa6ee789c57ff2c7499f3d7379"
TEM_REPO, TEM_COMMIT = "kepingbi/ProdSearch", "449335ba652fe7c877a008e154157d7b2a4b0e76"
UNISAR_OFFICIAL = {"max_rec_his_len": 30, "max_src_session_his_len": 30,
                   "max_session_item_len": 1, "final_emb_size": 64, "item_id_dim": 32,
                   "user_id_dim": 32, "word_id_dim": 32}


def cmd_unisar_export(args: argparse.Namespace) -> None:
    """gensr's UniSAR (seeded initialisation, or ``--run``) scores ``--n`` test instances of
    each task, one instance at a time; its weights, the instances and the scores go to
    ``WORK/unisar/export.pt`` for the official code (``unisar-official``)."""
    import numpy as np
    import torch

    from gensr.data.batching import eval_instances
    from gensr.data.dataset import load_data
    from gensr.models.baselines.unisar import UniSAR, UniSARConfig
    from gensr.runs import load_run

    torch.set_num_threads(1)
    if args.run:
        model, data = load_run(args.run, device="cpu")
    else:
        data = load_data(args.data)
        torch.manual_seed(args.seed)
        model = UniSAR(UniSARConfig(), data)
    model.eval()
    cfg = model.config
    table = eval_instances(data, "test")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(table))
    picked: dict[str, list] = {"rec": [], "src": [], "rec-only history": []}
    records = []
    with torch.no_grad():
        for i in order:
            batch = table.make_batch(data, np.array([i]), model.history_window)
            beh = batch.hist_behaviour[0][batch.hist_item[0] > 0]
            n_rec, n_src = int((beh == 1).sum()), int((beh == 2).sum())
            task = "rec" if int(batch.task[0]) == 0 else "src"
            if n_rec >= 1 and n_src >= 1 and n_rec <= 30 and n_src <= 30:
                group = task
            elif n_src == 0 and 1 <= n_rec <= 30:
                group = "rec-only history"
            else:
                continue
            if len(picked[group]) >= (args.n if group != "rec-only history" else 5):
                continue
            keep = batch.hist_item[0] > 0
            records.append({
                "group": group, "task": task, "user": int(batch.user[0]),
                "query_words": model.query_words[int(batch.query[0])].tolist(),
                "candidates": batch.candidates[0].tolist(),
                "target_pos": int(batch.target_pos[0]),
                "hist_item": batch.hist_item[0][keep].tolist(),
                "hist_behaviour": batch.hist_behaviour[0][keep].tolist(),
                "hist_query_words": [model.query_words[int(q)].tolist()
                                     for q in batch.hist_query[0][keep]],
                "n_rec": n_rec, "n_src": n_src,
                "gensr_logits": model.score(batch)[0].tolist()})
            picked[group].append(int(i))
            if all(len(v) >= (args.n if k != "rec-only history" else 5)
                   for k, v in picked.items()):
                break
    batch_check = unisar_batch_check(model, data, table)
    out = args.work / "unisar"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "records": records, "batch": batch_check, "config": {
        "max_his_len": cfg.max_his_len, "n_items": data.n_items, "n_users": data.n_users,
        "n_words": len(model.vocabulary), "max_query_words": cfg.max_query_words,
        "hidden": cfg.hidden, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "dropout": cfg.dropout, "q_i_cl_temp": cfg.q_i_cl_temp,
        "q_i_cl_weight": cfg.q_i_cl_weight, "his_cl_temp": cfg.his_cl_temp,
        "his_cl_weight": cfg.his_cl_weight, "seed": args.seed,
        "run": str(args.run) if args.run else None}}, out / "export.pt")
    print({k: len(v) for k, v in picked.items()}, "->", out / "export.pt")


def unisar_batch_check(model, data, table) -> dict:
    """The training loss on one batch of rec instances whose histories have the same length
    and composition (so one position mapping serves the whole batch): gensr's click BCE,
    history contrastive loss and query-item contrastive loss (with the negatives it drew)."""
    import numpy as np
    import torch

    hist = data.sequences.history(table.user, table.seq, model.history_window)[1]
    n_rec, n_src = (hist == 1).sum(1), (hist == 2).sum(1)
    ok = (table.task == 0) & (n_rec >= 1) & (n_src >= 1) & (n_rec <= 30) & (n_src <= 30)
    pairs = n_rec[ok] * 1000 + n_src[ok]
    values, counts = np.unique(pairs, return_counts=True)
    best = int(values[np.argmax(counts)])
    nr, ns = best // 1000, best % 1000
    rows = np.nonzero(ok & (n_rec == nr) & (n_src == ns))[0][: min(64, 256 // ns)]
    batch = table.make_batch(data, rows, model.history_window)
    labels = torch.zeros(batch.candidates.shape)
    labels[torch.arange(len(rows)), batch.target_pos] = 1.0
    with torch.no_grad():
        state = model.encode_history(batch)
        logits = model._logits(batch, state)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        his = model.history_loss(state)
        torch.manual_seed(123)
        qi = model.query_item_loss(batch)
        torch.manual_seed(123)  # the same draws, to hand them to the official code
        pos = (batch.hist_behaviour == 2) & (batch.hist_item > 0) & (batch.hist_query > 0)
        k = model.config.q_i_cl_negatives
        assert int(pos.sum()) <= model.config.q_i_cl_pairs
        neg_items = torch.randint(1, model.n_items + 1, (k,))
        neg_queries = torch.randint(1, model.n_queries + 1, (k,))
        # gensr's formula without its one extra rule (negatives equal to the positive masked)
        q = model.query_vectors(batch.hist_query[pos])
        i = model.item_vectors(batch.hist_item[pos])
        cl = model.query_item_cl

        def one_way(a, b, negs):
            logits = torch.cat([cl.pairs(a, b)[:, None], cl.logits(a, negs)], 1)
            return torch.nn.functional.cross_entropy(
                logits, torch.zeros(len(a), dtype=torch.long))

        qi_unmasked = 0.5 * (one_way(q, i, model.item_vectors(neg_items))
                             + one_way(i, q, model.query_vectors(neg_queries)))
    cands = batch.candidates.clone()
    t = batch.target_pos
    first = torch.cat([cands[torch.arange(len(rows)), t][:, None],
                       torch.stack([torch.cat([c[:i], c[i + 1:]]) for c, i in zip(cands, t)])],
                      1)
    keep = batch.hist_item > 0
    return {"n_rec": nr, "n_src": ns, "rows": len(rows), "user": batch.user.tolist(),
            "hist_item": [r[m].tolist() for r, m in zip(batch.hist_item, keep)],
            "hist_behaviour": [r[m].tolist() for r, m in zip(batch.hist_behaviour, keep)],
            "hist_query_words": [[model.query_words[int(q)].tolist() for q in r[m]]
                                 for r, m in zip(batch.hist_query, keep)],
            "candidates_target_first": first.tolist(),
            "neg_items": neg_items.tolist(),
            "neg_query_words": model.query_words[neg_queries].tolist(),
            "neg_queries": neg_queries.tolist(),
            "pos_queries": batch.hist_query[pos].tolist(),
            "pos_items": batch.hist_item[pos].tolist(),
            "gensr": {"click_bce": float(bce), "his_cl": float(his),
                      "q_i_cl": float(qi),
                      "q_i_cl_without_collision_mask": float(qi_unmasked)}}


def cmd_unisar_official(args: argparse.Namespace) -> None:
    """Run the worker in the reference environment, then compare its scores with gensr's."""
    import numpy as np
    import torch

    work: Path = args.work
    cmd = [args.python, str(Path(__file__).resolve()), "unisar-official-worker", "--work",
           str(work), "--checkout", str(args.checkout)]
    run(cmd, work / "logs" / "unisar-official.log")
    exp = torch.load(work / "unisar" / "export.pt", weights_only=True)
    off = torch.load(work / "unisar" / "official.pt", weights_only=True)
    groups: dict[str, dict] = {}
    for rec, probs in zip(exp["records"], off["probs"]):
        g = groups.setdefault(rec["group"], {"n": 0, "nan": 0, "max_abs_logit_diff": 0.0,
                                             "max_abs_prob_diff": 0.0, "same_target_rank": 0,
                                             "same_top1": 0, "gensr_logit_std": 0.0})
        g["n"] += 1
        p = np.asarray(probs, dtype=np.float64)
        gl = np.asarray(rec["gensr_logits"], dtype=np.float64)
        if np.isnan(p).any():
            g["nan"] += 1
            continue
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        ol = np.log(pc) - np.log1p(-pc)
        g["max_abs_logit_diff"] = max(g["max_abs_logit_diff"], float(np.abs(ol - gl).max()))
        g["max_abs_prob_diff"] = max(g["max_abs_prob_diff"],
                                     float(np.abs(p - 1 / (1 + np.exp(-gl))).max()))
        t = rec["target_pos"]
        g["same_target_rank"] += int((ol > ol[t]).sum() == (gl > gl[t]).sum())
        g["gensr_logit_std"] += float(gl.std()) / 1.0
        g["same_top1"] += int(np.argmax(ol) == np.argmax(gl))
    for g in groups.values():
        g["gensr_logit_std"] = round(g["gensr_logit_std"] / max(g["n"], 1), 4)
    summary = {"groups": groups, "unmapped_official_parameters": off["unmapped"],
               "config": exp["config"], "official_commit": off.get("commit"),
               "batch_check": off.get("batch_check"),
               "command": "python benchmarks/reference_check.py unisar-export --n "
                          f"{len(exp['records'])} (300 a task + 4)"
                          + (f" --run {exp['config']['run']}" if exp["config"]["run"] else "")
                          + " && python benchmarks/reference_check.py unisar-official "
                          f"--checkout {args.checkout} --python {args.python}"}
    write_card(work, "unisar-official", summary)
    print(json.dumps(summary, indent=2))


def cmd_unisar_official_worker(args: argparse.Namespace) -> None:  # in the reference venv
    import pickle
    import types

    import numpy as np
    import torch

    torch.set_num_threads(1)
    # the official code pins torch 1.10, which had no "fast path" (nested tensors) in
    # nn.TransformerEncoder; with it, torch 2.x fails on an all-padding sequence
    torch.backends.mha.set_fastpath_enabled(False)
    work: Path = args.work.resolve()
    exp = torch.load(work / "unisar" / "export.pt", weights_only=True)
    cfg, records, g = exp["config"], exp["records"], exp["state"]
    sys.path.insert(0, str(Path(args.checkout).resolve()))
    from utils import const  # the official package (imports its Runner, models, ...)

    vocab = work / "unisar" / "official_vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    # every search interaction of the exported histories becomes one official "session"
    words = cfg["max_query_words"]
    keyword, pos_items, session_of = [[0] * words], [[0]], {}
    for r_i, rec in enumerate(records):
        for j, (item, beh, qw) in enumerate(zip(rec["hist_item"], rec["hist_behaviour"],
                                                rec["hist_query_words"])):
            if beh == 2:
                session_of[(r_i, j)] = len(keyword)
                keyword.append(list(qw))
                pos_items.append([item])
    bc = exp["batch"]
    batch_session: dict = {}
    for r_i, (items, behs, qws) in enumerate(zip(bc["hist_item"], bc["hist_behaviour"],
                                                 bc["hist_query_words"])):
        for j, (item, beh, qw) in enumerate(zip(items, behs, qws)):
            if beh == 2:
                batch_session[(r_i, j)] = len(keyword)
                keyword.append(list(qw))
                pos_items.append([item])
    for name, obj in (("user", {}), ("item", {}),
                      ("session", {"keyword": np.array(keyword, dtype=np.int64),
                                   "pos_items": np.array(pos_items, dtype=np.int64)})):
        with open(vocab / f"{name}.pkl", "wb") as fh:
            pickle.dump(obj, fh)
    settings = dict(UNISAR_OFFICIAL, item_feature_list=["item_id"], item_text_feature=[],
                    item_id_num=cfg["n_items"] + 1, user_feature_list=["user_id"],
                    user_id_num=cfg["n_users"] + 1, word_id_num=cfg["n_words"] + 1,
                    max_query_word_len=words, user_map_vocab=str(vocab / "user.pkl"),
                    item_map_vocab=str(vocab / "item.pkl"),
                    session_map_vocab=str(vocab / "session.pkl"))
    for k, v in settings.items():
        setattr(const, k, v)
    from models.UniSAR import UniSAR as Official

    ns = types.SimpleNamespace(
        device=torch.device("cpu"), model_path="", dropout=cfg["dropout"],
        num_layers=cfg["n_layers"], num_heads=cfg["n_heads"], batch_size=1,
        q_i_cl_temp=cfg["q_i_cl_temp"], q_i_cl_weight=cfg["q_i_cl_weight"],
        his_cl_temp=cfg["his_cl_temp"], his_cl_weight=cfg["his_cl_weight"],
        pred_hid_units=[200, 80, 1])
    torch.manual_seed(0)
    model = Official(ns)
    mapped = map_unisar_state(g, cfg["n_layers"])
    own = model.state_dict()
    unmapped = sorted(k for k in own if k not in mapped)
    extra = sorted(k for k in mapped if k not in own)
    if extra:
        raise SystemExit(f"mapped names the official model lacks: {extra}")
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            raise SystemExit(f"{k}: official {tuple(own[k].shape)}, gensr {tuple(v.shape)}")
    model.load_state_dict(mapped, strict=False)
    model.eval()
    L = cfg["max_his_len"]
    probs = []
    with torch.no_grad():
        for r_i, rec in enumerate(records):
            inputs, n = official_inputs(rec, r_i, session_of, words)
            set_positions(model, g, L, n, rec["n_rec"], rec["n_src"])
            fn = model.rec_predict if rec["task"] == "rec" else model.src_predict
            probs.append(fn(inputs)[0].tolist())
    # the training loss on one batch (eval mode: no dropout)
    rows = []
    for r_i in range(bc["rows"]):
        rec = {"hist_item": bc["hist_item"][r_i], "hist_behaviour": bc["hist_behaviour"][r_i],
               "n_rec": bc["n_rec"], "n_src": bc["n_src"], "task": "rec",
               "user": bc["user"][r_i], "candidates": bc["candidates_target_first"][r_i]}
        rows.append(official_inputs(rec, r_i, batch_session, words)[0])
    inputs = {k: torch.cat([r[k] for r in rows]) for k in ("user", "all_his", "all_his_type",
                                                             "item", "neg_items")}
    inputs["search"] = False
    inputs["align_neg_item"] = torch.tensor(bc["neg_items"])
    inputs["align_neg_query"] = torch.tensor(bc["neg_query_words"])
    set_positions(model, g, L, bc["n_rec"] + bc["n_src"], bc["n_rec"], bc["n_src"])
    with torch.no_grad():
        losses = {k: float(v) for k, v in model.rec_loss(inputs).items()}
    collisions = {
        "neg_items_equal_to_a_pair_item": int(sum(
            sum(1 for n in bc["neg_items"] if n == i) for i in bc["pos_items"])),
        "neg_queries_equal_to_a_pair_query": int(sum(
            sum(1 for n in bc["neg_queries"] if n == q) for q in bc["pos_queries"]))}
    batch_check = {"rows": bc["rows"], "n_rec": bc["n_rec"], "n_src": bc["n_src"],
                   "q_i_pairs": len(bc["pos_items"]), "gensr": bc["gensr"],
                   "official": {"click_bce": losses["click_loss"],
                                "his_cl": losses.get("his_cl_loss"),
                                "q_i_cl": losses.get("q_i_cl_loss")},
                   "collisions": collisions}
    torch.save({"probs": probs, "unmapped": unmapped, "commit": UNISAR_COMMIT,
                "batch_check": batch_check}, work / "unisar" / "official.pt")
    print(f"{len(probs)} instances scored; official parameters not set from gensr: {unmapped}")


def official_inputs(rec: dict, r_i: int, session_of: dict, words: int):
    """One exported instance as the official model's input dict (batch of 1): the history
    in time order (rec twin before its search twin, as the official sort leaves them), then
    the rec padding slots, then the search padding slots (the official layout)."""
    import torch

    ids, types_ = [], []
    for j, (item, beh) in enumerate(zip(rec["hist_item"], rec["hist_behaviour"])):
        ids.append(item if beh == 1 else session_of[(r_i, j)])
        types_.append(beh)
    n = len(ids)
    ids += [0] * (30 - rec["n_rec"]) + [0] * (30 - rec["n_src"])
    types_ += [1] * (30 - rec["n_rec"]) + [2] * (30 - rec["n_src"])
    cands = rec["candidates"]
    inputs = {"user": torch.tensor([rec["user"]]), "all_his": torch.tensor([ids]),
              "all_his_type": torch.tensor([types_]), "item": torch.tensor([cands[0]]),
              "neg_items": torch.tensor([cands[1:]]), "search": rec["task"] == "src"}
    if rec["task"] == "src":
        qw = list(rec["query_words"])[:words]
        inputs["query"] = torch.tensor([qw + [0] * (words - len(qw))])
    return inputs, n


def set_positions(model, g: dict, L: int, n: int, n_rec: int, n_src: int) -> None:
    """The official tables count positions from the oldest interaction, gensr's from the most
    recent: for one instance, official row j = gensr row L - m + j (m = that sequence's
    length); the other rows only ever meet padding."""
    for table, key, m in ((model.global_pos_emb.pe.weight, "global_encoder.position.weight", n),
                          (model.rec_pos.pe.weight, "rec_encoder.position.weight", n_rec),
                          (model.src_pos.pe.weight, "src_encoder.position.weight", n_src)):
        table.data.zero_()
        table.data[:m] = g[key][L - m:L]


def map_unisar_state(g: dict, n_layers: int) -> dict:
    """gensr UniSAR parameter names -> the official model's (positions are set per instance
    by :func:`set_positions`)."""
    import torch

    m = {
        "session_embedding.item_feat.item_id_emb.weight": g["item_id.weight"],
        "session_embedding.item_feat.item_trans.weight": g["item_proj.weight"],
        "session_embedding.item_feat.item_trans.bias": g["item_proj.bias"],
        "session_embedding.user_feat.user_id_emb.weight": g["user_id.weight"],
        "session_embedding.user_feat.user_trans.weight": g["user_proj.weight"],
        "session_embedding.user_feat.user_trans.bias": g["user_proj.bias"],
        "query_embedding.query_encoder.word_embedding.weight": g["words.weight"],
        "query_embedding.query_trans.weight": g["query_proj.weight"],
        "query_embedding.query_trans.bias": g["query_proj.bias"],
        "rec_query": g["rec_query"],
        "rec_his_attn_pooling.W": g["rec_pooling.weight"][None],
        "src_his_attn_pooling.W": g["src_pooling.weight"][None],
        "feature_alignment.infoNCE_loss.weight_matrix": g["query_item_cl.weight"],
        "feature_alignment.infoNCE_loss.temp": g["query_item_cl.temperature"],
        "rec_his_cl.weight_matrix": g["rec_history_cl.weight"],
        "rec_his_cl.infoNCE_temp": g["rec_history_cl.temperature"],
        "src_his_cl.weight_matrix": g["src_history_cl.weight"],
        "src_his_cl.infoNCE_temp": g["src_history_cl.temperature"],
    }

    def attention(dst: str, src: str) -> None:
        m[f"{dst}.in_proj_weight"] = torch.cat([g[f"{src}.{p}.weight"]
                                                for p in ("query", "key", "value")])
        m[f"{dst}.in_proj_bias"] = torch.cat([g[f"{src}.{p}.bias"]
                                              for p in ("query", "key", "value")])
        m[f"{dst}.out_proj.weight"] = g[f"{src}.out.weight"]
        m[f"{dst}.out_proj.bias"] = g[f"{src}.out.bias"]

    def linear(dst: str, src: str) -> None:
        m[f"{dst}.weight"], m[f"{dst}.bias"] = g[f"{src}.weight"], g[f"{src}.bias"]

    for off, mine in (("global_transformer", "global_encoder"), ("rec_transformer",
                      "rec_encoder"), ("src_transformer", "src_encoder")):
        for i in range(n_layers):
            d, s = f"{off}.transformer_encoder.layers.{i}", f"{mine}.layers.{i}"
            attention(f"{d}.self_attn", f"{s}.attention")
            linear(f"{d}.linear1", f"{s}.ffn.net.0")
            linear(f"{d}.linear2", f"{s}.ffn.net.3")
            linear(f"{d}.norm1", f"{s}.norm1")
            linear(f"{d}.norm2", f"{s}.norm2")
    # the rec history reads the src->rec transitions in both codes
    for off, mine in (("rec_cross_fusion", "src_to_rec_fusion"),
                      ("src_cross_fusion", "rec_to_src_fusion")):
        for i in range(n_layers):
            d, s = f"{off}.layers.{i}", f"{mine}.layers.{i}"
            attention(f"{d}.self_attn", f"{s}.self_attention")
            attention(f"{d}.multihead_attn", f"{s}.cross_attention")
            linear(f"{d}.linear1", f"{s}.ffn.net.0")
            linear(f"{d}.linear2", f"{s}.ffn.net.3")
            for k in (1, 2, 3):
                linear(f"{d}.norm{k}", f"{s}.norm{k}")
    n_shared = len({k.split(".")[2] for k in g if k.startswith("ple.shared.")})
    n_spec = len({k.split(".")[3] for k in g if k.startswith("ple.specific.0.")})
    for k in range(n_shared):
        linear(f"ple_layer.share_experts.0.{k}.mlp.0", f"ple.shared.{k}.0")
    for t in range(2):
        for k in range(n_spec):
            linear(f"ple_layer.task_experts.0.{t}.{k}.mlp.0", f"ple.specific.{t}.{k}.0")
        linear(f"ple_layer.task_gates.0.{t}.0", f"ple.gates.{t}")
        linear(f"ple_layer.tower.{t}.mlp.0", f"ple.towers.{t}.0")
        linear(f"ple_layer.tower.{t}.mlp.3", f"ple.towers.{t}.3")
    for t, head in ((0, "rec_fc_layer"), (1, "src_fc_layer")):
        for j in (0, 3, 6):
            linear(f"{head}.fc.{j}", f"heads.{t}.{j}")
    return m


# --- TEM: the pieces gensr shares with the official code, on the same weights ---------------
def cmd_tem_export(args: argparse.Namespace) -> None:
    """gensr's TEM (seeded initialisation, or ``--run``) on ``--n`` test search instances:
    its weights, the inputs, its query vectors, its first layer's self-attention output at the
    query position and its scores -> ``WORK/tem/export.pt``."""
    import numpy as np
    import torch

    from gensr.data.batching import eval_instances
    from gensr.data.dataset import load_data
    from gensr.models.baselines.tem import TEM, TEMConfig
    from gensr.runs import load_run
    from gensr.tensor import drop_leading_padding

    torch.set_num_threads(1)
    if args.run:
        model, data = load_run(args.run, device="cpu")
    else:
        data = load_data(args.data)
        torch.manual_seed(args.seed)
        model = TEM(TEMConfig(), data)
    model.eval()
    cfg = model.config
    table = eval_instances(data, "test", tasks=("src",))
    idx = np.sort(np.random.default_rng(args.seed).choice(len(table), args.n, replace=False))
    batch = table.make_batch(data, idx, model.history_window)
    with torch.no_grad():
        scores = model.score(batch)
        qv = model.query_vectors(batch.query)
        # the first layer's self-attention at the query position, on gensr's own input
        b = batch.last(model.history_window)
        items, beh = drop_leading_padding(b.hist_item > 0, b.hist_item, b.hist_behaviour, keep=0)
        n = items.shape[1]
        query = qv + model.kind.weight[0]
        x = model.item_emb(items) + model.position.weight[cfg.max_his_len - n:]
        x = x + model.kind(beh.clamp(1, 2))
        seq = torch.cat([query[:, None], x], 1)
        ignore = torch.cat([torch.zeros_like(items[:, :1], dtype=torch.bool), items == 0], 1)
        attn = model.encoder.layers[0].self_attn(seq, seq, seq, key_padding_mask=ignore,
                                                 need_weights=False)[0][:, 0]
    out = args.work / "tem"
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "query_words": model.query_words[batch.query].clone(), "hist_item": items,
                "seq": seq, "ignore": ignore, "candidates": batch.candidates,
                "target_pos": batch.target_pos, "gensr_scores": scores,
                "gensr_query_vectors": qv, "gensr_attention": attn,
                "config": {"n_items": data.n_items, "n_words": len(model.vocabulary),
                           "hidden": cfg.hidden, "n_heads": cfg.n_heads,
                           "ffn": cfg.ffn_mult * cfg.hidden, "n_layers": cfg.n_layers,
                           "dropout": cfg.dropout, "seed": args.seed,
                           "run": str(args.run) if args.run else None}}, out / "export.pt")
    print(f"{len(idx)} search instances -> {out / 'export.pt'}")


def cmd_tem_official(args: argparse.Namespace) -> None:
    work: Path = args.work
    cmd = [args.python, str(Path(__file__).resolve()), "tem-official-worker", "--work",
           str(work), "--checkout", str(args.checkout)]
    run(cmd, work / "logs" / "tem-official.log")
    result = json.loads((work / "tem" / "official.json").read_text())
    run_dir = result.get("run")
    result["command"] = ("python benchmarks/reference_check.py tem-export --n "
                         f"{result['full_scorer']['instances']}"
                         + (f" --run {run_dir}" if run_dir else "")
                         + " && python benchmarks/reference_check.py tem-official "
                         f"--checkout {args.checkout} --python {args.python}")
    write_card(work, "tem-official", result)
    print(json.dumps(result, indent=2))


def cmd_tem_official_worker(args: argparse.Namespace) -> None:  # in the reference venv
    import types

    import numpy as np
    import torch

    torch.set_num_threads(1)
    work: Path = args.work.resolve()
    exp = torch.load(work / "tem" / "export.pt", weights_only=True)
    cfg, g = exp["config"], exp["state"]
    # the official code masks with uint8 tensors (torch < 1.2 style); torch 2.x wants bool
    masked_fill = torch.Tensor.masked_fill

    def bool_masked_fill(self, mask, value):
        return masked_fill(self, mask.bool() if mask.dtype == torch.uint8 else mask, value)

    torch.Tensor.masked_fill = bool_masked_fill
    sys.path.insert(0, str(Path(args.checkout).resolve()))
    from models.item_transformer import ItemTransformerRanker
    from models.neural import MultiHeadedAttention
    from models.text_encoder import FSEncoder

    d, heads = cfg["hidden"], cfg["n_heads"]
    n_items, n_words = cfg["n_items"], cfg["n_words"]
    # ids: the official tables keep padding in the LAST row, gensr's in row 0
    words = torch.cat([g["words.weight"][1:], torch.zeros(1, d)])
    prods = torch.cat([g["item_emb.weight"][1:], torch.zeros(1, d)])
    qw = exp["query_words"]
    q_off = torch.where(qw > 0, qw - 1, torch.full_like(qw, n_words))
    pre = "encoder.layers.0."
    w_in, b_in = g[pre + "self_attn.in_proj_weight"], g[pre + "self_attn.in_proj_bias"]
    out: dict = {}
    with torch.no_grad():
        # 1. the query encoder (HEM/ZAM/TEM's "fs"): tanh(W mean(words) + b)
        fs = FSEncoder(d, 0.0).eval()
        fs.f_W.weight.copy_(g["query_proj.weight"])
        fs.f_W.bias.copy_(g["query_proj.bias"])
        wq = torch.nn.functional.embedding(q_off, words)
        qv = fs(wq, q_off.ne(n_words))
        out["query_encoder_max_abs_diff"] = float((qv - exp["gensr_query_vectors"]).abs().max())
        # 2. one multi-head self-attention block on gensr's input sequence
        mha = MultiHeadedAttention(heads, d, dropout=0.0).eval()
        for lin, j in ((mha.linear_query, 0), (mha.linear_keys, 1), (mha.linear_values, 2)):
            lin.weight.copy_(w_in[j * d:(j + 1) * d])
            lin.bias.copy_(b_in[j * d:(j + 1) * d])
        mha.final_linear.weight.copy_(g[pre + "self_attn.out_proj.weight"])
        mha.final_linear.bias.copy_(g[pre + "self_attn.out_proj.bias"])
        seq, ignore = exp["seq"], exp["ignore"]
        ctx = mha(seq, seq, seq, mask=ignore[:, None, :])[:, 0]
        out["attention_max_abs_diff"] = float((ctx - exp["gensr_attention"]).abs().max())
        # 3. the whole official scorer (test_dotproduct) on the same weights and items
        ns = types.SimpleNamespace(
            train_review_only=True, embedding_size=d, dropout=cfg["dropout"],
            pretrain_emb_dir="", pretrain_up_emb_dir="", sep_prod_emb=False,
            model_name="item_transformer", ff_size=cfg["ffn"], heads=heads,
            inter_layers=cfg["n_layers"], query_encoder_name="fs", use_dot_prod=True,
            use_item_pos=False, use_pos_emb=True, sim_func="product")
        torch.manual_seed(0)
        model = ItemTransformerRanker(ns, "cpu", n_words + 1, n_items, ["<pad>"] * (n_words + 1))
        model.eval()
        model.word_embeddings.weight.copy_(words)
        model.product_emb.weight.copy_(prods)
        model.query_encoder.f_W.weight.copy_(g["query_proj.weight"])
        model.query_encoder.f_W.bias.copy_(g["query_proj.bias"])
        layer = model.transformer_encoder.transformer_inter[0]
        for lin, j in ((layer.self_attn.linear_query, 0), (layer.self_attn.linear_keys, 1),
                       (layer.self_attn.linear_values, 2)):
            lin.weight.copy_(w_in[j * d:(j + 1) * d])
            lin.bias.copy_(b_in[j * d:(j + 1) * d])
        layer.self_attn.final_linear.weight.copy_(g[pre + "self_attn.out_proj.weight"])
        layer.self_attn.final_linear.bias.copy_(g[pre + "self_attn.out_proj.bias"])
        layer.feed_forward.w_1.weight.copy_(g[pre + "linear1.weight"])
        layer.feed_forward.w_1.bias.copy_(g[pre + "linear1.bias"])
        layer.feed_forward.w_2.weight.copy_(g[pre + "linear2.weight"])
        layer.feed_forward.w_2.bias.copy_(g[pre + "linear2.bias"])
        layer.feed_forward.layer_norm.weight.copy_(g[pre + "norm1.weight"])
        layer.feed_forward.layer_norm.bias.copy_(g[pre + "norm1.bias"])
        model.transformer_encoder.layer_norm.weight.copy_(g[pre + "norm2.weight"])
        model.transformer_encoder.layer_norm.bias.copy_(g[pre + "norm2.bias"])
        hist = exp["hist_item"]
        u_items = torch.where(hist > 0, hist - 1, torch.full_like(hist, n_items))
        # official histories are oldest first and right-padded
        order = torch.argsort((hist == 0).int(), dim=1, stable=True)
        u_items = u_items.gather(1, order)
        cands = exp["candidates"] - 1
        batch = types.SimpleNamespace(query_word_idxs=q_off, target_prod_idxs=None,
                                      u_item_idxs=u_items, candi_prod_idxs=cands)
        official = model.test_dotproduct(batch)
        gensr = exp["gensr_scores"]
        t = exp["target_pos"]
        rank_o = (official > official.gather(1, t[:, None])).sum(1)
        rank_g = (gensr > gensr.gather(1, t[:, None])).sum(1)
        o, gg = official.numpy(), gensr.numpy()
        corr = [float(np.corrcoef(o[i], gg[i])[0, 1]) for i in range(len(o))]
        out["full_scorer"] = {
            "max_abs_score_diff": float((official - gensr).abs().max()),
            "mean_pearson_per_instance": float(np.mean(corr)),
            "same_target_rank": int((rank_o == rank_g).sum()), "instances": int(len(o))}
    out["run"], out["seed"] = cfg["run"], cfg["seed"]
    out["official_commit"] = TEM_COMMIT
    (work / "tem" / "official.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


# --- 4. one evaluator -----------------------------------------------------------------------
def evaluate_matrix(data, users, targets, scores, rule: str) -> dict[str, float]:
    """R/N@10/20 of a score matrix under ``rule`` (``gensr``: mask the user's train and
    valid items except the target; ``none``: mask only the padding item)."""
    import numpy as np
    import torch

    from gensr.eval.protocol import masked_pairs, seen_before
    from gensr.metrics import rank_metrics

    s = torch.from_numpy(np.array(scores, dtype=np.float32, copy=True))
    s[:, 0] = float("-inf")
    if rule == "gensr":
        r, c = masked_pairs(seen_before(data, "test"), users, targets)
        s[torch.from_numpy(r), torch.from_numpy(c)] = float("-inf")
    m = rank_metrics(s, torch.from_numpy(targets), ks=(10, 20))
    return {k: round(float(v.mean()), 4) for k, v in m.items()}


def cmd_report(args: argparse.Namespace) -> None:
    import numpy as np

    from gensr.data.dataset import load_data

    work: Path = args.work
    data = load_data(args.data)
    ref_table, ref_targets = test_rec_table(data)
    order = np.argsort(ref_table.user)
    ref_users, ref_targets = ref_table.user[order], ref_targets[order]
    entries = {}
    for card_path in sorted((work / "scores").glob("*.json")):
        name = card_path.stem
        if not (work / "scores" / f"{name}.npy").exists():
            continue
        card = json.loads(card_path.read_text())
        ids = np.load(work / "scores" / f"{name}.ids.npz")
        users, targets = ids["users"], ids["targets"]
        same = bool(np.array_equal(users, ref_users) and np.array_equal(targets, ref_targets))
        scores = np.load(work / "scores" / f"{name}.npy", mmap_mode="r")
        card["same_test_instances_as_gensr"] = same
        card["common_eval"] = {rule: evaluate_matrix(data, users, targets, scores, rule)
                               for rule in ("gensr", "none")}
        entries[name] = card
        print(name, card["common_eval"], "same instances:", same, flush=True)
    export = json.loads((work / "export.json").read_text())
    official = {}
    for name in ("unisar-official", "tem-official"):
        path = work / "scores" / f"{name}.json"
        if path.exists():
            official[name.split("-")[0]] = json.loads(path.read_text())
    out = {"data": str(args.data), "data_fingerprint": data.meta.get("fingerprint"),
           "export": export, "runs": entries, **official,
           "reference_code": {"recbole": "recbole==1.2.1 (PyPI)",
                              "unisar": f"{UNISAR_REPO}@{UNISAR_COMMIT}",
                              "tem": f"{TEM_REPO}@{TEM_COMMIT}"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reference_check.json").write_text(json.dumps(out, indent=2))
    tables = render_tables(entries, official)
    md = RESULTS / "reference_check.md"
    text = md.read_text() if md.exists() else f"# Reference check\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    md.write_text(f"{head}{BEGIN}\n{tables}\n{END}{tail}")
    print(f"wrote {RESULTS / 'reference_check.json'} and the tables of {md}")


def render_tables(entries: dict, official: dict) -> str:
    def row(name: str, card: dict) -> str:
        g, n = card["common_eval"]["gensr"], card["common_eval"]["none"]
        own = card.get("own_metrics_test_full", {})
        own_r = own.get("R@10", own.get("recall@10"))
        own_n = own.get("N@10", own.get("ndcg@10"))
        own_s = (f"{own_r:.4f} / {own_n:.4f}" if own_r is not None and own_n is not None
                 else "–")
        return (f"| `{name}` | {g['R@10']:.4f} | {g['N@10']:.4f} | {g['R@20']:.4f} | "
                f"{g['N@20']:.4f} | {n['R@10']:.4f} | {n['N@10']:.4f} | {own_s} | "
                f"{'yes' if card['same_test_instances_as_gensr'] else 'NO'} |")

    head = ("| score matrix | R@10 (gensr rule) | N@10 | R@20 | N@20 | R@10 (no mask) | N@10 "
            "(no mask) | the tool's own evaluator R@10 / N@10 | same 8,442 test instances |\n"
            "|---|---|---|---|---|---|---|---|---|")
    parts = []
    for title, prefix in (("SASRec", ("gensr-sasrec", "recbole-sasrec")),
                          ("LightGCN", ("gensr-lightgcn", "recbole-lightgcn"))):
        rows = [row(k, v) for k, v in sorted(entries.items()) if k.startswith(prefix)]
        if rows:
            parts.append(f"**{title}** (test split, 8,442 rec instances, full ranking over "
                         f"4,385 items; generated by `reference_check.py report`)\n\n"
                         + head + "\n" + "\n".join(rows))
    if "unisar" in official:
        u = official["unisar"]
        lines = ["| instances | n | max abs logit diff | max abs P diff | same target rank | "
                 "same top-1 | NaN (official) |", "|---|---|---|---|---|---|---|"]
        for name, g in u["groups"].items():
            lines.append(f"| {name} | {g['n']} | {g['max_abs_logit_diff']:.2e} | "
                         f"{g['max_abs_prob_diff']:.2e} | {g['same_target_rank']} | "
                         f"{g['same_top1']} | {g['nan']} |")
        b = u.get("batch_check") or {}
        if b:
            lines += ["", f"Training loss on one batch ({b['rows']} rec instances, "
                      f"{b['n_rec']} rec + {b['n_src']} search interactions each, "
                      f"{b['q_i_pairs']} query-item pairs; eval mode):", "",
                      "| term | gensr | official |", "|---|---|---|"]
            for k in ("click_bce", "his_cl", "q_i_cl"):
                lines.append(f"| {k} | {b['gensr'][k]:.6f} | {b['official'][k]:.6f} |")
            lines.append(f"| q_i_cl, gensr's formula without its collision mask | "
                         f"{b['gensr']['q_i_cl_without_collision_mask']:.6f} | "
                         f"{b['official']['q_i_cl']:.6f} |")
            c = b["collisions"]
            lines.append(f"\nSampled query-item negatives equal to a pair's positive: "
                         f"{c['neg_items_equal_to_a_pair_item']} (items), "
                         f"{c['neg_queries_equal_to_a_pair_query']} (queries).")
        parts.append("**UniSAR** (same weights in both codes; scores of the 100 stored "
                     "test candidates)\n\n" + "\n".join(lines))
    if "tem" in official:
        t = official["tem"]
        f = t["full_scorer"]
        parts.append(
            "**TEM** (same weights where the two architectures share a part; "
            f"{f['instances']} test search instances)\n\n"
            "| piece | max abs diff |\n|---|---|\n"
            f"| query encoder tanh(W mean(words) + b) | {t['query_encoder_max_abs_diff']:.2e} |\n"
            f"| one multi-head self-attention block (query position) | "
            f"{t['attention_max_abs_diff']:.2e} |\n"
            f"| whole scorer (different layer structure, positions, kind embeddings) | "
            f"{f['max_abs_score_diff']:.3f} (mean per-instance Pearson "
            f"{f['mean_pearson_per_instance']:.3f}; same target rank "
            f"{f['same_target_rank']}/{f['instances']}) |")
    return "\n\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, **kw) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, **kw)
        sp.add_argument("--work", type=Path, default=DEFAULT_WORK)
        sp.add_argument("--data", type=Path, default=ROOT / "data" / "scientific")
        sp.set_defaults(fn=fn)
        return sp

    add("export", cmd_export)
    sp = add("gensr-sasrec", cmd_gensr_sasrec)
    sp.add_argument("--kind", choices=("rec", "mixed"), default="rec")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", action="append", default=[], help="extra gensr train --set")
    sp.add_argument("--tag", default="", help="suffix of the run name (with --set)")
    sp = add("gensr-lightgcn", cmd_gensr_lightgcn)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--cf-arg", action="append", default=[],
                    help="extra gensr pretrain-cf option, e.g. --cf-arg=--patience=60")
    sp.add_argument("--tag", default="", help="suffix of the run name (with --cf-arg)")
    for name, fn in (("recbole", cmd_recbole), ("recbole-worker", cmd_recbole_worker)):
        sp = add(name, fn)
        sp.add_argument("--python", default="/work/refcheck/venv/bin/python")
        sp.add_argument("--model", choices=("SASRec", "LightGCN"), required=True)
        sp.add_argument("--loss", choices=("bce", "bpr", "ce"), default="bce")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--name", default="")
        sp.add_argument("--init", choices=("recbole", "joint"), default="recbole",
                        help="LightGCN: RecBole's initialisation or gensr's (one joint table)")
    # the official UniSAR and TEM codes: the same three commands each
    for model, counted, checkout, commands in (
            ("UniSAR", "instances per task", "unisar",
             (cmd_unisar_export, cmd_unisar_official, cmd_unisar_official_worker)),
            ("TEM", "search instances", "prodsearch",
             (cmd_tem_export, cmd_tem_official, cmd_tem_official_worker))):
        export, official, worker = commands
        sp = add(f"{model.lower()}-export", export)
        sp.add_argument("--n", type=int, default=300, help=counted)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--run", type=Path, default=None, help=f"a trained gensr {model} run")
        for name, fn in ((f"{model.lower()}-official", official),
                         (f"{model.lower()}-official-worker", worker)):
            sp = add(name, fn)
            sp.add_argument("--checkout", type=Path, default=Path("/work/refcheck") / checkout)
            sp.add_argument("--python", default="/work/refcheck/venv/bin/python")
            sp.add_argument("--n", type=int, default=300)
    add("report", cmd_report)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
