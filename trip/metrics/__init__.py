"""Evaluation metrics.

    from trip.metrics import compute_fid, reference_stats
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
]
