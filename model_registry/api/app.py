"""The aiohttp application: routes, middlewares and shared state."""

from __future__ import annotations

from aiohttp import web

from model_registry.api import (
    deployments,
    devices,
    drift,
    experiments,
    fleet_pages,
    models,
    rollouts,
    system,
)
from model_registry.api.auth import CTX_KEY, auth_middleware
from model_registry.api.errors import error_middleware
from model_registry.api.metrics import METRICS_KEY, RegistryMetrics, metrics_middleware
from model_registry.dashboard.live import HUB_KEY, LiveHub
from model_registry.dashboard.routes import dashboard_routes, security_headers
from model_registry.services.context import RegistryContext

# Multipart framing and form fields around the model file itself.
UPLOAD_OVERHEAD_BYTES = 1024 * 1024


def create_app(ctx: RegistryContext, metrics: RegistryMetrics | None = None) -> web.Application:
    """Build the API application around a registry context."""
    app = web.Application(
        middlewares=[metrics_middleware, security_headers, error_middleware, auth_middleware],
        client_max_size=ctx.config.api.max_upload_mb * 1024 * 1024 + UPLOAD_OVERHEAD_BYTES,
    )
    app[CTX_KEY] = ctx
    app[METRICS_KEY] = metrics or RegistryMetrics()
    app[HUB_KEY] = hub = LiveHub(ctx)

    async def close_hub(_: web.Application) -> None:
        await hub.close()

    app.on_cleanup.append(close_hub)
    app.router.add_routes(
        [
            web.get("/healthz", system.healthz),
            web.get("/metrics", system.metrics),
            web.get("/v1/openapi.json", system.openapi),
            web.post("/v1/tokens", system.create_token),
            web.get("/v1/artifacts/{sha256}", system.get_artifact),
            web.get("/v1/models", models.list_models),
            web.get("/v1/models/{name}/versions", models.list_versions),
            web.post("/v1/models/{name}/versions", models.push_version),
            web.get("/v1/models/{name}/versions/{version}", models.get_version),
            web.post("/v1/models/{name}/rollback", models.rollback_model),
            web.get("/v1/models/{name}/drift", drift.get_drift),
            web.get("/v1/deployments", deployments.list_deployments),
            web.post("/v1/deployments", deployments.create_deployment),
            web.get("/v1/deployments/{id}", deployments.get_deployment),
            web.get("/v1/rollouts", rollouts.list_rollouts),
            web.post("/v1/rollouts", rollouts.create_rollout),
            web.get("/v1/rollouts/{id}", rollouts.get_rollout),
            web.post("/v1/rollouts/{id}/pause", rollouts.pause_rollout),
            web.post("/v1/rollouts/{id}/resume", rollouts.resume_rollout),
            web.post("/v1/rollouts/{id}/abort", rollouts.abort_rollout),
            web.get("/v1/experiments", experiments.list_experiments),
            web.post("/v1/experiments", experiments.start_experiment),
            web.get("/v1/experiments/{id}", experiments.get_experiment),
            web.post("/v1/experiments/{id}/promote", experiments.promote_experiment),
            web.post("/v1/experiments/{id}/stop", experiments.stop_experiment),
            web.get("/v1/devices", devices.list_devices),
            web.post("/v1/devices", devices.create_device),
            web.get("/v1/devices/{id}", devices.get_device),
            web.get("/v1/devices/{id}/history", fleet_pages.device_history),
            web.get("/v1/fleet/devices", fleet_pages.list_fleet),
            web.delete("/v1/devices/{id}", devices.delete_device),
            web.patch("/v1/devices/{id}", devices.patch_device),
            web.get("/v1/tokens", system.list_tokens),
            web.delete("/v1/tokens/{id}", system.delete_token),
            *dashboard_routes(),
        ]
    )
    return app
