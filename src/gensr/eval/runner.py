"""``gensr evaluate``: load a run (or build a reference scorer), evaluate, print and save."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from gensr.data import load_data
from gensr.data.candidates import check_strategy
from gensr.errors import ConfigError, DataError, RunError
from gensr.eval.protocol import Shard, evaluate, evaluate_full
from gensr.eval.tables import print_table
from gensr.models.registry import model_class
from gensr.outputs import no_space_is_error, write_atomic
from gensr.runs import load_run, pick_device, prepare_inference, unfinished_warning


def evaluate_run(
    *,
    run_dir: Path | None,
    model: str | None,
    data: Path | None,
    split: str = "test",
    full: bool = False,
    ties: str = "expected",
    batch_size: int = 64,
    max_instances: int | None = None,
    save_scores: Path | None = None,
    device: str | None = None,
    console: Console | None = None,
    precision: str = "auto",
    fast_path: bool = True,
    candidates: str = "uniform",
    retrievers: list[str] | None = None,
    rerank_n: int = 100,
    index: str = "exact",
    fuse: str | float | None = None,
) -> dict:
    """Evaluate and print; a run's metrics go to ``RUN_DIR/metrics_{split}.json``
    (``metrics_{split}.{candidates}.json`` for a candidate strategy other than uniform).

    ``precision``/``fast_path``: how GenSR scores (:func:`gensr.runs.prepare_inference`;
    auto = bf16 on CUDA, fp32 on CPU; the fast path everywhere).
    ``retrievers`` (with ``full``): full-catalogue ranking by retrieving ``rerank_n`` items
    with each retriever spec and reranking them with the model (:func:`evaluate_retrievers`);
    ``fuse`` (``"auto"`` or a weight) also reports the fused score of the reranker and the
    retriever.
    """
    console = console or Console()
    check_strategy(candidates)
    if full and candidates != "uniform":
        raise ConfigError("--candidates has no effect with --full (it ranks every item)")
    shard = None if full else Shard.current()  # several processes: `accelerate launch`
    if shard is not None and device is None:
        from accelerate import PartialState

        device = str(PartialState().device)  # each process on its own GPU
    if (run_dir is None) == (model is None):
        raise ConfigError("give either RUN_DIR or --model NAME (with --data)")
    if retrievers and not full:
        raise ConfigError("--retriever ranks the whole catalogue: add --full")
    if retrievers and rerank_n < 1:
        raise ConfigError(f"--rerank-n must be >= 1, got {rerank_n}")
    if fuse is not None and not retrievers:
        raise ConfigError("--fuse fuses a retriever's score with the reranker's: add "
                          "--full --retriever SPEC")
    fuse = parse_fuse(fuse)
    if run_dir is not None:
        net, dataset = load_run(run_dir, data, device)
        unfinished = unfinished_warning(run_dir)  # evaluated, but never without a word
        if unfinished:
            console.print(unfinished, highlight=False, soft_wrap=True)
    else:
        if data is None:
            raise ConfigError("--model needs --data DATA_DIR")
        dataset = load_data(data)
        cls = model_class(model)  # type: ignore[arg-type]
        if cls.trainable:
            raise ConfigError(f"{model} needs training: run `gensr train --model {model}` first")
        net = cls(cls.config_class(), dataset).to(pick_device(device))
    used = prepare_inference(net, precision, fast_path)
    present = set(dataset.candidates(split, candidates)["task"].unique().to_list())
    served = [t for t in net.tasks if t in present]
    if not served:
        raise DataError(f"the {split} split of {dataset.path} has no "
                        f"{' or '.join(net.tasks)} instances: nothing to evaluate {net.name} on")
    missing = [t for t in net.tasks if t not in present]
    if missing:
        console.print(f"warning: the {split} split has no {' or '.join(missing)} instances: "
                      f"evaluating {', '.join(served)} only", highlight=False)
    with _outputs_on_full_disk(run_dir, save_scores):
        return _evaluate_and_write(
            net, dataset, run_dir=run_dir, split=split, full=full, ties=ties,
            batch_size=batch_size, max_instances=max_instances, save_scores=save_scores,
            console=console, candidates=candidates, retrievers=retrievers, rerank_n=rerank_n,
            index=index, shard=shard, used=used, fast_path=fast_path, fuse=fuse)


@contextmanager
def _outputs_on_full_disk(run_dir: Path | None, save_scores: Path | None) -> Iterator[None]:
    """A full disk while writing the scores or the metrics: one line, and no half-written
    scores file left (the metrics files are written atomically)."""
    target = save_scores if save_scores is not None else run_dir
    started = time.time() - 1

    def remove() -> None:  # the scores files written by this evaluation (one per retriever)
        if save_scores is None:
            return
        out = Path(save_scores)
        for path in [out, *out.parent.glob(f"{out.stem}.*{out.suffix or '.parquet'}")]:
            if path.is_file() and path.stat().st_mtime >= started:
                path.unlink(missing_ok=True)

    if target is None:
        yield
        return
    with no_space_is_error(target, RunError, remove,
                           after="no partial output was kept: free some space and evaluate "
                                 "again"):
        yield


def parse_fuse(value: str | float | None) -> str | float | None:
    """``--fuse``: ``auto`` (the weight chosen on validation), a weight >= 0, or None."""
    if value is None or value == "auto":
        return value
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--fuse must be auto or a weight >= 0, got {value!r}") from None
    if not weight >= 0 or weight == float("inf"):
        raise ConfigError(f"--fuse must be auto or a finite weight >= 0, got {value!r}")
    return weight


def _evaluate_and_write(net, dataset, *, run_dir, split, full, ties, batch_size, max_instances,
                        save_scores, console, candidates, retrievers, rerank_n, index, shard,
                        used, fast_path, fuse=None) -> dict:
    """:func:`evaluate_run` once the model and data are loaded and checked."""
    if retrievers:
        return evaluate_retrievers(net, dataset, retrievers, split=split, n=rerank_n,
                                   run_dir=run_dir, batch_size=batch_size,
                                   max_instances=max_instances, rankings_out=save_scores,
                                   index=index, console=console, fuse=fuse)
    if full:
        if not net.supports_full_ranking:
            raise ConfigError(f"{net.name} cannot score every item: rank the whole catalogue "
                              "through a retriever, e.g. --full --retriever lightgcn "
                              "--rerank-n 100 (docs/serving.md)")
        metrics = evaluate_full(net, dataset, split, batch_size=batch_size,
                                max_instances=max_instances)
    else:
        metrics = evaluate(net, dataset, split, batch_size=batch_size, ties=ties,  # type: ignore[arg-type]
                           max_instances=max_instances, scores_out=save_scores,
                           candidates=candidates, shard=shard)
    if shard is not None and shard.index != 0:
        return metrics  # process 0 prints and writes
    name = f"{net.name}{' (full)' if full else ''}"
    strategy = "" if full or candidates == "uniform" else f".{candidates}"
    print_table({name: metrics}, metrics=("R@1", "R@5", "N@5", "R@10", "N@10", "R@20", "N@20"),
                title=f"{dataset.name} {split}"
                      + ("" if full else f", {candidates} candidates")
                      + (f" ({used}{'' if fast_path else ', original path'})"
                         if net.name == "gensr" else ""), console=console)
    if run_dir is not None:
        out = Path(run_dir) / f"metrics_{split}{'_full' if full else ''}{strategy}.json"
        write_atomic(out, json.dumps(metrics, indent=2), RunError)
        console.print(f"wrote {out}")
    return metrics


RERANK_METRICS = ("R@1", "R@5", "N@5", "R@10", "N@10", "R@20", "N@20")


def evaluate_retrievers(
    net,
    dataset,
    specs: list[str],
    *,
    split: str = "test",
    n: int = 100,
    run_dir: Path | None = None,
    batch_size: int = 64,
    max_instances: int | None = None,
    rankings_out: Path | None = None,
    index: str = "exact",
    console: Console | None = None,
    fuse: str | float | None = None,
) -> dict:
    """Full-catalogue metrics of each retriever alone and of ``net`` reranking its top ``n``,
    one table (columns ``R@n`` and ``net ∘ R@n``; the row R@n is the rerank's ceiling). A
    run's results go to ``RUN_DIR/metrics_{split}_rerank.json``; ``rankings_out`` writes the
    retrieved items and reranked order of every instance (one Parquet file per retriever
    when there are several: ``NAME.RETRIEVER.parquet``). ``fuse``: also the fused score
    (:func:`gensr.eval.rerank.fuse_scores`) with this weight, or with ``"auto"`` the weight
    of :data:`~gensr.eval.rerank.FUSION_GRID` that is best (mean N@10) on 1,000 valid
    instances, per retriever (``--fuse W`` then serves the same ranking)."""
    from gensr.eval.rerank import (
        FUSION_GRID,
        choose_fusion_weight,
        evaluate_rerank,
        rerank_ks,
    )
    from gensr.retrieve import build_retriever

    console = console or Console()
    results: dict[str, dict] = {}
    report: dict[str, dict] = {}
    for spec in specs:
        retriever = build_retriever(spec, dataset, run_dir=run_dir, device=net.device,
                                    index=index)
        if not any(t in net.tasks for t in retriever.tasks):
            raise ConfigError(f"{net.name} serves {', '.join(net.tasks)}, the {retriever.name} "
                              f"retriever {', '.join(retriever.tasks)}: nothing to rerank")
        out = rankings_out
        if out is not None and len(specs) > 1:
            out = Path(out).with_suffix(f".{retriever.name}{Path(out).suffix or '.parquet'}")
        weight, tried = fuse, None
        if fuse == "auto":
            valid = evaluate_rerank(net, retriever, dataset, "valid", n=n,
                                    batch_size=batch_size, max_instances=1000,
                                    fuse=FUSION_GRID, progress=False)
            weight = choose_fusion_weight(valid)
            tried = {str(w): {t: m["N@10"] for t, m in rows.items()}
                     for w, rows in valid.fused.items()}
            console.print(f"{retriever.name}: fusion weight {weight:g} (best mean N@10 on "
                          f"{valid.instances:,} valid instances of {list(FUSION_GRID)})")
        result = evaluate_rerank(net, retriever, dataset, split, n=n, batch_size=batch_size,
                                 max_instances=max_instances, rankings_out=out,
                                 fuse=() if weight is None else (float(weight),))
        results[f"{retriever.name}@{n}"] = result.retriever
        results[f"{net.name} ∘ {retriever.name}@{n}"] = result.rerank or {}
        report[retriever.name] = {"retriever": retriever.describe(), "n": n,
                                  "instances": result.instances, "seconds": result.seconds,
                                  "retriever_metrics": result.retriever,
                                  "rerank_metrics": result.rerank}
        if weight is not None:
            fused = result.fused[float(weight)]
            results[f"{net.name} ∘ {retriever.name}@{n} fused (w {float(weight):g})"] = fused
            report[retriever.name].update(fuse_weight=float(weight), fused_metrics=fused,
                                          **({"fuse_valid_N@10": tried} if tried else {}))
        console.print(f"{retriever.name}: {result.instances:,} instances, retrieve "
                      f"{result.seconds['retrieve']:.1f}s, rerank {result.seconds['rerank']:.1f}s"
                      + (f" -> {out}" if out is not None else ""))
    ks = rerank_ks(n)
    shown = tuple(dict.fromkeys(
        [m for m in RERANK_METRICS if int(m.split("@")[1]) in ks] + [f"R@{n}"]))
    print_table(results, metrics=shown, title=f"{dataset.name} {split}: full catalogue, "
                f"{n} retrieved then reranked by {net.name} (R@{n} = the rerank's ceiling)",
                console=console)
    if run_dir is not None:
        path = Path(run_dir) / f"metrics_{split}_rerank.json"
        write_atomic(path, json.dumps(report, indent=2), RunError)
        console.print(f"wrote {path}")
    return results
