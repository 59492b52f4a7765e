"""Registry services: the operations the API, the CLI and the MQTT side share."""
