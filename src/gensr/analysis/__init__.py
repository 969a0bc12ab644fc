"""The paper's analyses as commands (``gensr analyze …``); each writes CSV + PNG + JSON.

* :func:`run_mi` — Table 1: I(X; Y_S), I(X; Y_R) per model with MINE (:mod:`.mine`);
* :func:`run_grad_conflict` — cosine of the search and rec gradients on a shared block;
* :func:`run_space` — Fig. 3: t-SNE/KDE of task inputs, PCA of task hidden states;
* :func:`run_sweep` — Fig. 5: test metrics against τ or λ;
* :func:`run_ablate` — Fig. 4: the full model against each ablation switch.

They work through the :class:`~gensr.models.base.SRModel` interface only (``score``,
``loss``, ``representation``, ``shared_parameters``). Plotting and the estimators need the
``analysis`` extra (scikit-learn, scipy, matplotlib). See docs/analysis.md.
"""

from gensr.analysis.common import AnalysisRun, load_runs, shared_cf_path
from gensr.analysis.experiments import ABLATIONS, run_ablate, run_sweep
from gensr.analysis.features import InputFeatures
from gensr.analysis.grad_conflict import ConflictModel, models_from_specs, run_grad_conflict
from gensr.analysis.mi import MIConfig, run_mi
from gensr.analysis.mine import MineConfig, MineResult, mine
from gensr.analysis.space import SpaceConfig, run_space

__all__ = [
    "ABLATIONS", "AnalysisRun", "ConflictModel", "InputFeatures", "MIConfig", "MineConfig",
    "MineResult", "SpaceConfig", "load_runs", "mine", "models_from_specs", "run_ablate",
    "run_grad_conflict", "run_mi", "run_space", "run_sweep", "shared_cf_path",
]
