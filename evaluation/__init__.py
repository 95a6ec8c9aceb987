"""Temporal-split evaluation of recommenders: split, metrics, protocol, streaming, reports.

The entry point is :func:`run_evaluation`; the pieces are importable on their own.
"""

from evaluation.bootstrap import bootstrap_ci
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
    "bootstrap_ci",
    "evaluate_model",
    "evaluate_streaming",
    "ranking_metrics",
    "run_evaluation",
    "temporal_split",
    "write_report",
]
