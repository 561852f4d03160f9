"""Scoring maps against truth: the paper's change metrics, every map of the method on a dataset,
reference maps, the ablation."""

from .change import ConfusionCounts, change_metrics, format_table

__all__ = ["ConfusionCounts", "change_metrics", "format_table"]
