"""Recommender models: tensors and arrays in, tensors and arrays out; no SQL, Kafka or files."""

from models.base import InteractionGraph, Recommender

__all__ = ["InteractionGraph", "Recommender"]
