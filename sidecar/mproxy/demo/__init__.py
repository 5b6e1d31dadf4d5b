"""`mproxy demo`: an edge, a sidecar and sample backends on loopback."""
