"""The [mqtt] section: the broker URLs (one, or the nodes of a clustered broker), the login,
the topic prefix and TLS."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_agent.config.settings import MqttSettings
from edge_agent.config.source import ConfigSource, existing_file, read_secret
from edge_common.broker_address import BrokerAddress, BrokerURLError
from edge_protocol import Topics
from edge_protocol.errors import TopicError

MAX_BROKER_URLS = 16  # the nodes of one clustered broker; more is a mistake, not a cluster


def mqtt_settings(src: ConfigSource, values: dict[str, Any], device_id: str) -> MqttSettings:
    """The checked [mqtt] settings; the username defaults to the device id."""
    password_file = values.pop("password_file", None)
    if password_file is not None:
        values["password"] = read_secret(src, "mqtt.password_file", password_file)
    values["url"] = _broker_urls(src, values)[0]
    settings = MqttSettings(**{"username": device_id, **values})
    if not settings.username:
        raise src.error("mqtt.username must not be empty")
    try:
        Topics(settings.topic_prefix)
    except TopicError as e:
        raise src.error(f"mqtt.topic_prefix: {e}") from e
    if settings.reconnect_min_s > settings.reconnect_max_s:
        raise src.error("mqtt.reconnect_min_s must not be above mqtt.reconnect_max_s")
    _check_tls(src, settings)
    return settings


def _check_broker_url(src: ConfigSource, key: str, url: str) -> None:
    try:  # the one parser of broker URLs, which the connection uses too
        BrokerAddress.parse(url, key)
    except BrokerURLError as e:
        raise src.error(str(e)) from None


def _broker_urls(src: ConfigSource, values: Mapping[str, Any]) -> tuple[str, ...]:
    """`mqtt.url`, or the nodes of `mqtt.urls`, checked: the first one is tried first."""
    if "url" in values and "urls" in values:
        raise src.error("set mqtt.url (one broker) or mqtt.urls (several), not both")
    if "url" in values:
        _check_broker_url(src, "mqtt.url", values["url"])
        return (values["url"],)
    urls: tuple[str, ...] = values.get("urls", ())
    if "urls" not in values:
        raise src.error("mqtt.url is required (or mqtt.urls, the nodes of a clustered broker)")
    if not urls or len(urls) > MAX_BROKER_URLS:
        raise src.error(f"mqtt.urls must list 1 to {MAX_BROKER_URLS} URLs, got {len(urls)}")
    for n, url in enumerate(urls):
        _check_broker_url(src, f"mqtt.urls[{n}]", url)
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise src.error(f"mqtt.urls lists {repeated[0]!r} more than once")
    if len({url.startswith("mqtts://") for url in urls}) > 1:
        # A fallback in clear text would send the password unencrypted whenever it is used.
        raise src.error("mqtt.urls mixes mqtt:// and mqtts://; use the same scheme for every node")
    return urls


def _check_tls(src: ConfigSource, settings: MqttSettings) -> None:
    if (settings.client_cert is None) != (settings.client_key is None):
        raise src.error("mqtt.client_cert and mqtt.client_key go together: set both or neither")
    files = {"ca_file": settings.ca_file, "client_cert": settings.client_cert}
    files["client_key"] = settings.client_key
    for name, path in files.items():
        if path is None:
            continue
        # A TLS file next to a plain-text URL means the operator believes the link is encrypted.
        if not settings.url.startswith("mqtts://"):  # every URL has the first one's scheme
            which = f"mqtt.url is {settings.url!r}"
            if len(settings.urls) > 1:
                which = f"mqtt.urls are mqtt:// ({settings.url!r}...)"
            raise src.error(f"mqtt.{name} needs an mqtts:// url, but {which}")
        existing_file(src, f"mqtt.{name}", path)
