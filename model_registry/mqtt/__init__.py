"""MQTT for the registry: credentials, access rules, mosquitto files and the embedded broker."""
