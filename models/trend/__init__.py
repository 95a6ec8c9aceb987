"""The trend-aware personalised ranker: its per-event state, score, tuning and model."""

from models.trend.ranker import TrendRanker
from models.trend.scoring import TrendParams, covis_scores, trend_scores
from models.trend.state import TrendState
from models.trend.tuning import ValidationTask, tune

__all__ = ["TrendParams", "TrendRanker", "TrendState", "ValidationTask", "covis_scores",
           "trend_scores", "tune"]
