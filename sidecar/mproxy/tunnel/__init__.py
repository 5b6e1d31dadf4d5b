"""The tunnel: WebSocket transport, handshake, heartbeats, reconnect, and the stream multiplexer."""
