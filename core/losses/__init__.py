"""Training losses: KD-MSI (classification, CAM distillation) and HiCD (correlations)."""
