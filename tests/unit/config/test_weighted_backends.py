"""routes[].backends: weighted backends (and refused shares) instead of one backend."""

from __future__ import annotations

import random

import pytest

from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import BackendConfig, load_sidecar_config
from mproxy.sidecar.app import build_table

BASE = "edge: {urls: ['ws://h/']}\n"
WEIGHTED = BASE + """
routes:
  - name: db
    match: {services: [tcp], ports: [5432]}
    backends:
      - {host: a.ns.svc.cluster.local, port: 9000, weight: 3, connectTimeoutSeconds: 2, proxyProtocol: v2}
      - {host: b.ns.svc.cluster.local, port: 9000}
      - {weight: 0, host: c.ns.svc.cluster.local, port: 9000}
      - {weight: 1, refuse: true}
"""


def test_weighted_backends_load_and_round_trip() -> None:
    cfg = load_sidecar_config(WEIGHTED)
    route = cfg.routes[0]
    assert route.backend is None
    assert [(b.host, b.weight, b.refuse) for b in route.backends] == [
        ("a.ns.svc.cluster.local", 3, False), ("b.ns.svc.cluster.local", 1, False),
        ("c.ns.svc.cluster.local", 0, False), ("-", 1, True)]
    assert route.backends[0].proxy_protocol == "v2" and route.backends[1].connect_timeout_seconds == 5
    out = route.to_dict()
    assert "backend" not in out
    assert out["backends"][1] == {  # weight 1 is the default: left out
        "host": "b.ns.svc.cluster.local", "port": 9000, "connectTimeoutSeconds": 5.0, "proxyProtocol": "none"}
    assert out["backends"][3] == {"weight": 1, "refuse": True}
    assert load_sidecar_config(cfg.to_yaml()) == cfg


def test_one_backend_stays_as_it_was() -> None:
    cfg = load_sidecar_config(BASE + "routes: [{name: a, backend: {host: h, port: 1}}]")
    assert cfg.routes[0].backends == () and cfg.routes[0].targets == (cfg.routes[0].backend,)
    assert cfg.routes[0].to_dict()["backend"] == {"host": "h", "port": 1, "connectTimeoutSeconds": 5.0,
                                                  "proxyProtocol": "none"}


def test_the_table_picks_by_the_config_weights() -> None:
    table = build_table(load_sidecar_config(WEIGHTED), rng=random.Random(11))
    route = table.routes[0]
    picks = [table.pick(route) for _ in range(10_000)]
    hosts = [p.host if p else None for p in picks]
    assert "c.ns.svc.cluster.local" not in hosts
    assert hosts.count("a.ns.svc.cluster.local") / 10_000 == pytest.approx(0.6, abs=0.02)
    assert hosts.count(None) / 10_000 == pytest.approx(0.2, abs=0.02)
    a = next(p for p in picks if p and p.host.startswith("a."))
    assert (a.port, a.connect_timeout, a.proxy_protocol) == (9000, 2.0, "v2")


@pytest.mark.parametrize(
    ("routes", "path", "words"),
    [
        ("[{name: a, backend: {host: h, port: 1}, backends: [{host: h, port: 1}]}]", "routes[0].backends",
         "not both"),
        ("[{name: a}]", "routes[0].backend", "or backends"),
        ("[{name: a, backends: []}]", "routes[0].backends", "at least one"),
        ("[{name: a, backends: [{host: h, port: 1, weight: -1}]}]", "routes[0].backends[0].weight",
         "0-1000000"),
        ("[{name: a, backends: [{host: h, port: 1, weight: 1.5}]}]", "routes[0].backends[0].weight",
         "integer"),
        ("[{name: a, backends: [{host: h, port: 1}, {port: 1}]}]", "routes[0].backends[1].host", "required"),
        ("[{name: a, backends: [{weight: 1, refuse: true, host: h}]}]", "routes[0].backends[0].host",
         "only a weight"),
        ("[{name: a, backends: [{weight: 1, refuse: yes please}]}]", "routes[0].backends[0].refuse",
         "true or false"),
        ("[{name: a, backends: [{host: h, port: 1, wieght: 2}]}]", "routes[0].backends[0].wieght",
         "unknown field"),
        ("[{name: u, match: {services: [udp]}, backends: [{host: h, port: 1},"
         " {host: h, port: 2, proxyProtocol: v1}]}]", "routes[0].backends[1].proxyProtocol", "udp"),
        ("[{name: a, backends: [" + ", ".join(["{host: h, port: 1}"] * 65) + "]}]", "routes[0].backends",
         "at most 64"),
    ],
)
def test_errors_name_the_field(routes: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sidecar_config(BASE + "routes: " + routes)
    assert info.value.path == path
    assert words in str(info.value)


def test_udp_routes_take_weighted_backends() -> None:
    cfg = load_sidecar_config(BASE + "routes: [{name: u, match: {services: [udp]}, backends: "
                              "[{host: a, port: 53, weight: 2}, {weight: 1, refuse: true}]}]")
    assert [b.weight for b in cfg.routes[0].backends] == [2, 1]


def test_a_refuse_entry_needs_no_host() -> None:
    assert BackendConfig.refused(4).to_dict() == {"weight": 4, "refuse": True}
    assert load_sidecar_config(BASE + "routes: [{name: a, backends: [{weight: 4, refuse: true}]}]").routes[
        0].backends == (BackendConfig.refused(4),)
