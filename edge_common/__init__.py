"""What the agent and the registry both need that is not protocol.

Durable file writes, process locks, task supervision, command-line usage with suggestions,
broker addresses with their TLS hints, listen checks, and the MQTT adapter (`mqtt/`, the one
place here that imports a third-party package: paho-mqtt). Unlike `edge_protocol`, which stays
pure, this package touches files and sockets; like it, it imports neither service, so both may
import it (docs/development.md, "Architecture").
"""
