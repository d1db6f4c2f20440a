"""Deployment: ONNX export, OpenVINO, INT8 quantization, latency timing, the measurement facade, and the CPU cores a run may use."""
