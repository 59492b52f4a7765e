"""The local inference endpoint: Open Inference Protocol v2 over HTTP (aiohttp).

docs/inference-api.md describes it for users; docs/openapi-agent.json is its OpenAPI document.
"""

from edge_agent.metrics import AgentMetrics
from edge_agent.server.app import create_app
from edge_agent.server.dataplane import DataPlane, StatusProvider
from edge_agent.server.runner import InferenceServer, serve_until_signalled
from edge_agent.server.settings import ServerConfig

__all__ = [
    "AgentMetrics",
    "DataPlane",
    "InferenceServer",
    "ServerConfig",
    "StatusProvider",
    "create_app",
    "serve_until_signalled",
]
