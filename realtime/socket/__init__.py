"""One WebSocket: the connection (accept, auth, expiry, reader), its outbox (queue,
writer, the one 1013 decision) and what a frame means (package dispatch)."""
