"""HTTP routing at L7: the HTTP routers a stream route can hand its streams to (`routes[].http`).

`match` compiles a router's HTTPRoute-shaped routes into a pure matcher, `filters` holds the pure header,
redirect and rewrite computations, `front` runs the routers (aiohttp server side, one pooled aiohttp client
session to the backends). See docs/sidecar.md, "HTTP routers".
"""
