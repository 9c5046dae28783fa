"""Evaluation metrics: FID (offline pytorch-fid), generator reversal and the PAG score.

    from trip.metrics import compute_fid, reference_stats, pag_score, reverse_generator
"""

from trip.metrics.fid import (
    FEATURE_DIM,
    FeatureStats,
    FIDResult,
    StatsCacheError,
    compute_fid,
    ensure_inception_weights,
    feature_stats,
    fid_from_stats,
    inception_features,
    load_inception,
    load_stats,
    reference_stats,
    save_stats,
    stats_key,
    to_uint8,
)
from trip.metrics.reversal import disagreement_indices, evaluate_reversal, pag_score, reverse_generator

__all__ = [
    "FEATURE_DIM",
    "FeatureStats",
    "FIDResult",
    "StatsCacheError",
    "compute_fid",
    "ensure_inception_weights",
    "feature_stats",
    "fid_from_stats",
    "inception_features",
    "load_inception",
    "load_stats",
    "reference_stats",
    "save_stats",
    "stats_key",
    "to_uint8",
    "disagreement_indices",
    "evaluate_reversal",
    "pag_score",
    "reverse_generator",
]
