"""Temporal-split evaluation of recommenders: split, metrics, protocol, streaming, reports.

The entry point is :func:`run_evaluation`; the pieces are importable on their own.
"""

from evaluation.baselines import TrendingPopularity, tune_baselines
from evaluation.bootstrap import bootstrap_ci, paired_difference
from evaluation.headline import headline
from evaluation.metrics import RankingAccumulator, ranking_metrics
from evaluation.protocol import EvaluationTask, ModelEvaluation, evaluate_model
from evaluation.report import write_report
from evaluation.runner import run_evaluation
from evaluation.split import TemporalSplit, temporal_split
from evaluation.streaming import (
    Approach,
    FallbackScorer,
    PopularityApproach,
    RetrainApproach,
    StaleApproach,
    evaluate_streaming,
    plan_windows,
)

__all__ = [
    "Approach",
    "EvaluationTask",
    "FallbackScorer",
    "ModelEvaluation",
    "PopularityApproach",
    "RankingAccumulator",
    "RetrainApproach",
    "StaleApproach",
    "TemporalSplit",
    "TrendingPopularity",
    "bootstrap_ci",
    "evaluate_model",
    "evaluate_streaming",
    "headline",
    "paired_difference",
    "plan_windows",
    "ranking_metrics",
    "run_evaluation",
    "temporal_split",
    "tune_baselines",
    "write_report",
]
