"""Offline core: data, the SASRec session model, baselines, evaluation, complements and bundles."""

from model.recommender import Recommender

__all__ = ["Recommender"]
