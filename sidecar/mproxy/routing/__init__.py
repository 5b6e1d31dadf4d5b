"""Route matching by service name, serviceport, TLS SNI / HTTP Host (exact and wildcard)."""

from mproxy.routing.table import Backend, Route, RouteTable

__all__ = ["Backend", "Route", "RouteTable"]
