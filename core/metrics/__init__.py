"""The paper's change metrics (OA, F1, change IoU, mIoU, FP and FN rates) from confusion
counts. Every map of the method on a dataset is scored in `kdmsi.inference.maps`, reference
maps in `kdmsi.detect.reference`, the ablation table in `kdmsi.reports.ablation`."""

from .change import ConfusionCounts, change_metrics, format_table

__all__ = ["ConfusionCounts", "change_metrics", "format_table"]
