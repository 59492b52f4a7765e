"""Where the agent's broker is: the `[mqtt]` URL, parsed with the agent's error."""

from __future__ import annotations

from edge_agent.errors import ConfigError
from edge_common.broker_address import BrokerAddress, BrokerURLError


def broker_address(url: str) -> BrokerAddress:
    """Parse `[mqtt] url`, raising ConfigError if it is malformed."""
    try:
        return BrokerAddress.parse(url, "mqtt.url")
    except BrokerURLError as e:
        raise ConfigError(str(e)) from None
