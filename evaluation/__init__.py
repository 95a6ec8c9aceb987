"""Temporal-split evaluation of recommenders: split, metrics, protocol, streaming, reports."""
