"""Optimisation and export stage: pruning, quantisation, ONNX export, gates, runtime."""
