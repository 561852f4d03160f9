"""The HTML training reports: pages, figures, sample tiles, one per way to train."""
