"""The exportable masker (transform, masking, normalisation, k policy), its ONNX export and its use on folders."""
