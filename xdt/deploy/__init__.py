"""Deployment: a trained model folder -> the artifact that serves it.

- `trim.py`: keep only the vocabulary pieces a corpus uses (embedding rows sliced, tokenizer rebuilt);
- `onnx_export.py`: a token-classification ONNX graph (torch's exporter), checked against PyTorch, optionally
  dynamically quantized to int8 (onnxruntime's quantizer);
- `onnx_predictor.py`: runs such a folder with onnxruntime behind the call signature eval uses for a torch model
  (`model(input_ids=..., attention_mask=...).logits`), so `xdt eval` scores the deployed artifact itself.
"""
