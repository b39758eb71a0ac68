"""The experiment stack: training loop, recipes, checkpoints, sweeps and reports.

Not imported by the core ``sparsejax`` package (it needs TensorFlow Datasets,
orbax, ml_collections and, for plots, matplotlib).

Example:
  >>> from sparsejax.experiment import base_config, train_and_evaluate
  >>> summary = train_and_evaluate(base_config(), "/tmp/run")
"""

from sparsejax.experiment.config import apply_overrides, base_config, load, validate
from sparsejax.experiment.recipes import RECIPES, Phase, build_phases
from sparsejax.experiment.train import evaluate, run_phase, train_and_evaluate

__all__ = ["RECIPES", "Phase", "apply_overrides", "base_config", "build_phases", "evaluate",
           "load", "run_phase", "train_and_evaluate", "validate"]
