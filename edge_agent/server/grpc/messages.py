"""The DataPlane's metadata, configuration and statistics dictionaries as protobuf messages."""

from __future__ import annotations

from typing import Any

from edge_agent.server.grpc import inference_pb2 as pb


def model_metadata_message(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    """ModelMetadataResponse from the OIP model metadata object."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[tensor(**spec) for spec in metadata["inputs"]],
        outputs=[tensor(**spec) for spec in metadata["outputs"]],
    )


def model_config_message(config: dict[str, Any]) -> pb.ModelConfig:
    """ModelConfig from the JSON of Triton's model configuration extension."""
    message = pb.ModelConfig(
        name=config["name"],
        platform=config["platform"],
        backend=config["backend"],
        max_batch_size=config["max_batch_size"],
    )
    for spec in config["input"]:
        message.input.add(name=spec["name"], data_type=spec["data_type"], dims=spec["dims"])
    for spec in config["output"]:
        message.output.add(name=spec["name"], data_type=spec["data_type"], dims=spec["dims"])
    if "dynamic_batching" in config:
        message.dynamic_batching.CopyFrom(pb.ModelDynamicBatching(**config["dynamic_batching"]))
    return message


def statistics_message(stats: dict[str, Any]) -> pb.ModelStatisticsResponse:
    """ModelStatisticsResponse from the JSON of Triton's statistics extension."""
    response = pb.ModelStatisticsResponse()
    for entry in stats["model_stats"]:
        model = response.model_stats.add(
            name=entry["name"],
            version=entry["version"],
            last_inference=entry["last_inference"],
            inference_count=entry["inference_count"],
            execution_count=entry["execution_count"],
        )
        for key, duration in entry["inference_stats"].items():
            getattr(model.inference_stats, key).CopyFrom(pb.StatisticDuration(**duration))
        for batch in entry["batch_stats"]:
            added = model.batch_stats.add(batch_size=batch["batch_size"])
            for key in ("compute_input", "compute_infer", "compute_output"):
                getattr(added, key).CopyFrom(pb.StatisticDuration(**batch[key]))
    return response
