"""ONNX export (custom-op and portable forms)."""
