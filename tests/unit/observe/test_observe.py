"""The shared HTTP endpoints (real aiohttp client on loopback) and structured logs."""

from __future__ import annotations

import json
import logging

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from mproxy.observe.http import ObserveServer
from mproxy.observe.logs import JsonFormatter, TextFormatter, redact_url


async def test_endpoints() -> None:
    reg = CollectorRegistry()
    Counter("mproxy_test_things", "things", registry=reg).inc(3)
    state = {"ready": False}
    server = ObserveServer(reg, lambda: (state["ready"], "no tunnel connected"),
                           lambda: {"tunnels": [{"state": "connecting"}]}, host="127.0.0.1", port=0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/healthz") as r:
                assert r.status == 200
            async with s.get(base + "/readyz") as r:
                assert r.status == 503 and "no tunnel connected" in await r.text()
            state["ready"] = True
            async with s.get(base + "/readyz") as r:
                assert r.status == 200
            async with s.get(base + "/metrics") as r:
                assert r.status == 200 and "mproxy_test_things_total 3.0" in await r.text()
            async with s.get(base + "/status") as r:
                assert json.loads(await r.text()) == {"tunnels": [{"state": "connecting"}]}
    finally:
        await server.stop()


def test_json_and_text_logs_carry_tags() -> None:
    rec = logging.LogRecord("mproxy.sidecar", logging.INFO, __file__, 1, "opened %s", ("web",), None)
    rec.tunnel = "edge:443#0"
    rec.client = "203.0.113.5"
    line = json.loads(JsonFormatter().format(rec))
    assert line["msg"] == "opened web" and line["tunnel"] == "edge:443#0"
    assert line["client"] == "203.0.113.5" and line["level"] == "info"
    text = TextFormatter().format(rec)
    assert "tunnel=edge:443#0" in text and "client=203.0.113.5" in text


def test_redact_url_drops_tokens_and_credentials() -> None:
    assert redact_url("wss://u:secret@edge.example.com:8443/t?access_token=abc") == "wss://edge.example.com:8443/t"
    assert redact_url("ws://[::1]:80/") == "ws://[::1]:80/"
