"""Route matching by service name, serviceport, TLS SNI / HTTP Host (exact and wildcard)."""
