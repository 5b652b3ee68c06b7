"""The Open Inference Protocol (KServe v2) beyond HTTP's routes (routes/inference_v2.py):

- `protocol`: what HTTP and gRPC share: tensors to records, results to tensors, versions, metadata;
- `grpc_service`: `inference.GRPCInferenceService` on its own port (setting `grpc_port`);
- `messages`: the gRPC messages, built from `grpc_predict_v2.proto` (regenerate its descriptor
  module with scripts/generate_open_inference_descriptor.py).
"""
