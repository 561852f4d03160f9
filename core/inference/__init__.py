"""From a trained network to maps: multiscale (sigmoid) inference, pseudo labels, thresholds chosen
without pixel truth."""
