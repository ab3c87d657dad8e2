"""The token-budget estimator: request features, content classes, online calibration.

Pure and I/O-free: the gateway and the simulator call the same objects.
"""

from dualpool.budget.calibrator import Calibrator, Coefficients, Feedback, FeedbackReason
from dualpool.budget.classes import BUILTIN_CLASSES, ClassifierConfig, ContentClassifier
from dualpool.budget.config import EstimatorConfig
from dualpool.budget.estimator import BudgetEstimate, BudgetEstimator, OutputSource
from dualpool.budget.features import RequestFeatures, extract_features, utf8_len

__all__ = [
    "BUILTIN_CLASSES",
    "BudgetEstimate",
    "BudgetEstimator",
    "Calibrator",
    "ClassifierConfig",
    "Coefficients",
    "ContentClassifier",
    "EstimatorConfig",
    "Feedback",
    "FeedbackReason",
    "OutputSource",
    "RequestFeatures",
    "extract_features",
    "utf8_len",
]
