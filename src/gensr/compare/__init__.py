"""``gensr compare``: train what needs training, evaluate every model on the same candidates,
write the paper's Tables 2–3 layout.

For each model in ``--models`` and each seed, the run directory ``OUT/MODEL/seedS`` is

* **reused** when it holds a finished run (``run.json`` with status finished, early_stopped
  or not trainable) trained with the same settings — nothing is retrained;
* **resumed** when it holds an interrupted run (a ``last/`` checkpoint);
* **trained** (through :func:`gensr.train.train_run`, the shared trainer) otherwise

(the rules of :mod:`gensr.reuse`, shared with the analyses and quickstart).

Every model then ranks the same stored candidates (one candidate strategy,
:mod:`gensr.data.candidates`) of the same evaluation instances (one seeded subset of both
tasks for all when ``eval.max_instances`` is set) with :func:`gensr.reuse.evaluate_run`; a
model skips the tasks it does not serve ("–" in the table). ``OUT/compare.md`` holds the
table (rows = R@5 N@5 R@10 N@10 per task, columns = models, best in bold; mean ± std over
seeds; † where the reference model's difference is significant), the paired tests and the
runs; ``OUT/compare.json`` the
metrics of every run, seeds, p-values, history windows, run directories, train and evaluation
times and the data fingerprint. With another candidate strategy than uniform the files are
``OUT/compare.STRATEGY.{md,json}``, so one OUT holds the tables of several strategies over
the same trained runs.

Fairness checks, before anything trains: every model that reads a history must read the same
window (``max_his_len``, counted in interactions of the canonical log by every model) unless
``allow_different_windows`` is set (the table then flags it); ``validation`` gives every
trained model the same validation subset for early stopping.

The YAML file (``--config``)::

    defaults:
      train: {...}            # TrainConfig fields for every trained model
    models:
      NAME:                   # a registered model name; entries not in --models are ignored
        type: MODEL           # only for a variant: NAME is then a column of its own (e.g.
                              # gensr-paper beside gensr), configuring registered model MODEL
        seeds: [0]            # this model's seeds, over the top-level seeds: (not --seeds)
        model: {...}          # fields of the model's config class
        train: {...}          # TrainConfig fields, over the defaults
    eval:
      max_instances: null     # seeded subset of the split's instances, the same for all models
      batch_size: 64
      ties: expected          # expected | pessimistic | optimistic
      seed: 0                 # the subset's seed
      candidates: uniform     # uniform | bm25-hard | popular (gensr data candidates)
    seeds: [0, 1, 2]          # seeds of every seeded model (default: train.seed, one run)
    history_window: 20        # max_his_len of every model that reads a history
    allow_different_windows: false
    validation:               # one validation subset for every trained model
      max_instances: 1000     # (sets train.eval_max_instances, eval_fraction 1, eval_seed)
      seed: 0
    significance:
      reference: gensr        # tested against every other model
      test: t-test            # t-test | bootstrap (paired, over the shared instances)
      alpha: 0.05
    cf: {...}                 # gensr pretrain-cf settings, used when compare pretrains the table

The package: :mod:`~gensr.compare.config` (the YAML and each model's plan),
:mod:`~gensr.compare.orchestrate` (:func:`compare`), :mod:`~gensr.compare.report` (means,
tests and the Markdown).
"""

from gensr.compare.config import (
    CompareConfig,
    ModelPlan,
    SignificanceSettings,
    ValidationSettings,
    check_windows,
    load_compare_config,
    parse_models,
    parse_seeds,
    plan_model,
    window_stats,
)
from gensr.compare.orchestrate import CF_FILE, DEFAULT_MODELS, compare, run_plan
from gensr.compare.report import (
    SIGNIFICANCE_MARK,
    compare_markdown,
    seed_means,
    summarise,
    write_instances,
)
from gensr.reuse import (
    EVAL_FILE,
    EvalSettings,
    RunEval,
    eval_file,
    evaluation_table,
    stored_eval,
    strategy_suffix,
    table_digest,
)

__all__ = ["CF_FILE", "DEFAULT_MODELS", "EVAL_FILE", "SIGNIFICANCE_MARK", "CompareConfig",
           "EvalSettings", "ModelPlan", "RunEval", "SignificanceSettings", "ValidationSettings",
           "check_windows", "compare", "compare_markdown", "eval_file", "evaluation_table",
           "load_compare_config", "parse_models", "parse_seeds", "plan_model", "run_plan",
           "seed_means", "stored_eval", "strategy_suffix", "summarise", "table_digest",
           "window_stats", "write_instances"]
