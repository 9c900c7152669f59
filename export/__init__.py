"""Export of a model directory's networks: ONNX graphs (onnx_export), dynamic int8 quantisation
(quantize) and TensorRT plans (tensorrt_build); `dpt-live export onnx|tensorrt` (commands)."""
