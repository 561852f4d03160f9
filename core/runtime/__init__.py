"""Model files to batch runners: torch and ONNX Runtime, ONNX export and its cache, the speed
probe."""
