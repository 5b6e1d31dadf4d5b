"""A draining sidecar refuses new streams (E_SHUTTING_DOWN) before answering anything: the edge replays
the client onto another tunnel, so a rolling restart loses no client."""

from __future__ import annotations

import pytest

from .harness import (
    http_get,
    metrics_text,
    ports,
    tls_request,
)

pytestmark = pytest.mark.e2e


async def test_refused_clients_move_to_another_tunnel(parts) -> None:  # type: ignore[no-untyped-def]
    relay = await parts.edge()
    back_a, _, dev_a, dev_b = await parts.two_replicas(relay)
    assert dev_a.mux is not None
    dev_a.mux.draining = True  # what `mproxy sidecar` does on SIGTERM
    p = ports(relay)
    answers = [await tls_request(p["tls"], "app.test", back_a.ca, b"r%d" % i) for i in range(6)]
    assert answers == [b"B:r%d" % i for i in range(6)]  # TLS ClientHello replayed, handshake intact
    code, body, _ = await http_get(p["http"], "web.app.test")
    assert (code, body) == (200, "hello B host=web.app.test path=/")
    assert dev_a.mux.refused.get("E_SHUTTING_DOWN") == 1  # refused once, then no longer chosen
    text = await metrics_text(relay)
    assert 'mproxy_edge_client_connections_total{name="app.test",protocol="https",result="ok"} 6.0' in text
    # with nobody left to take it, the client gets a clean refusal, not a hang
    assert dev_b.mux is not None
    dev_b.mux.draining = True
    code, _, headers = await http_get(p["http"], "web.app.test")
    assert code == 503 and headers["X-Mproxy-Reason"] == "tunnel_full"
