"""The prediction path, from a request's records to a stored prediction.

- `choice`: which runtime a version serves with and why (no model library: the API's schemas use it);
- `runtime`: a model version's serving runtime (PyTorch, or validated ONNX int8) and
  `infer_batched`, the one batched inference used by the API, runtime validation, the drift
  checks and the serving benchmark;
- `registry`: the hot-swappable current model, refreshed from the database;
- `batcher`: micro-batching of concurrent requests;
- `writer`: background storage of every answered prediction;
- `classify`: what /v1/predict and /v2 infer share;
- `errors`: what can keep a prediction from being made.
"""
