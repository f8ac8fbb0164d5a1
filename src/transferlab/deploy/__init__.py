"""Using a trained model elsewhere: ONNX export (float/int8), torch-free ONNX prediction, the web page + REST API.

May import: core, data, reports, backbones, features, model, runs."""
