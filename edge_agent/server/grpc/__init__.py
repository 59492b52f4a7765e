"""The Open Inference Protocol v2 over gRPC (optional: `pip install 'edge-model-runtime[grpc]'`).

Importing this package needs grpcio and protobuf; the agent imports it only when `[grpc]` is
configured. inference_pb2.py and inference_pb2.pyi are generated from inference.proto.
"""
