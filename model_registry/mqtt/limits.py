"""How large an MQTT message may be, on mosquitto (`broker-config`) and on the embedded broker.

The largest payload the protocol ever sends is a full artifact chunk: `artifacts.chunk_size_kib`
is at most 16 MiB, the cap `edge_protocol.metadata.MAX_CHUNK_SIZE` puts on every release's
`chunk_size`. Signed documents stop at 1 MiB and device messages at 256 KiB, far below. So every
broker we configure refuses a payload above that chunk, and a packet above it plus room for the
rest of a PUBLISH (a topic of up to 64 KiB, the packet id, the fixed header).
"""

from __future__ import annotations

from edge_protocol.envelope import MAX_DOCUMENT_BYTES
from edge_protocol.messages import MAX_MESSAGE_BYTES
from edge_protocol.metadata import MAX_CHUNK_SIZE

MAX_PAYLOAD_BYTES = max(MAX_CHUNK_SIZE, MAX_DOCUMENT_BYTES, MAX_MESSAGE_BYTES)
PACKET_HEADROOM_BYTES = 128 * 1024  # an MQTT topic is at most 65535 bytes; the rest is tiny
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + PACKET_HEADROOM_BYTES
