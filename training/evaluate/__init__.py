"""Per-mask-state evaluation of a student (``msde-eval``), one module per job.

The question the project answers is "how much does a mask cost, and did training buy it
back?", so every number is reported three times: on the unmasked view of each face pair, on
its masked view, and on both together ("all").

* ``metrics``: pure functions of numpy arrays (scikit-learn / SciPy where they have them);
* ``run``: running a model on a split (``evaluate_model``, ``evaluate_checkpoint``) and
  calibrating on the validation split (``calibrate_result``);
* ``gradcam``: Grad-CAM overlays; ``figures``: the plots; ``report``: ``report.md`` and
  ``metrics.json``; ``cli``: ``msde-eval``.
"""

from training.evaluate.metrics import (
    STATES,
    VIEWS,
    StateMetrics,
    ViewOutputs,
    accuracy,
    aggregate,
    confusion,
    macro_f1,
    majority_baseline,
    mean_std,
    metrics_from_views,
    per_class_recall,
    wilson_interval,
)
from training.evaluate.report import write_report
from training.evaluate.run import (
    EvalResult,
    calibrate_result,
    evaluate_checkpoint,
    evaluate_model,
)

__all__ = [
    "STATES",
    "VIEWS",
    "EvalResult",
    "StateMetrics",
    "ViewOutputs",
    "accuracy",
    "aggregate",
    "calibrate_result",
    "confusion",
    "evaluate_checkpoint",
    "evaluate_model",
    "macro_f1",
    "majority_baseline",
    "mean_std",
    "metrics_from_views",
    "per_class_recall",
    "wilson_interval",
    "write_report",
]
