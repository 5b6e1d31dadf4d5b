"""The rendered sidecar config: what the sidecar's own schema accepts, and the ConfigMap around it."""

from __future__ import annotations

import pytest
import yaml
from tests.unit.operator.fixtures import SERVICES, tunnel

from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import load_sidecar_config
from mproxy_operator.model import parse_spec
from mproxy_operator.render import config_map, digest, render_config, sidecar_config_dict
from mproxy_operator.resolve import resolve_routes


def _render(body: dict) -> tuple[dict, str]:  # type: ignore[type-arg]
    spec = parse_spec(body["spec"])
    resolved, _ = resolve_routes(spec.routes, SERVICES, "prod")
    text = render_config(spec, resolved).to_yaml()
    return yaml.safe_load(text), text


def test_full_config_round_trips_through_the_sidecar_schema() -> None:
    data, text = _render(
        tunnel(
            defaultRoute="web",
            limits={"maxStreamsPerClient": 7},
            metrics={"labels": "route", "maxClients": 50, "port": 9191},
            logLevel="debug",
        )
    )
    assert data["edge"] == {
        "urls": ["wss://edge.example.com/mproxy"],
        "connectionsPerUrl": 1,
        "tokenFile": "/var/run/mproxy/token/token",
        "tokenIn": "header",
    }
    web, ssh = data["routes"]
    assert web == {
        "name": "web",
        "match": {"services": ["https"], "hostnames": ["shop.example.com", "*.shop.example.com"]},
        "backend": {
            "host": "web.prod.svc.cluster.local",
            "port": 443,
            "connectTimeoutSeconds": 5.0,
            "proxyProtocol": "none",
        },
    }
    assert ssh["backend"]["port"] == 22 and ssh["backend"]["proxyProtocol"] == "v2"
    assert ssh["match"] == {"services": ["ssh"], "ports": [22]}
    assert data["defaultRoute"] == "web"
    assert data["limits"]["maxStreamsPerClient"] == 7
    assert data["metrics"] == {"labels": "route", "maxClients": 50}
    assert data["http"] == {"listen": "0.0.0.0:9191"}
    assert data["logging"] == {"format": "json", "level": "debug"}
    assert load_sidecar_config(text).to_dict() == data  # the sidecar reads back exactly this


def test_ca_file_only_when_a_ca_is_referenced() -> None:
    body = tunnel()
    assert "caFile" not in _render(body)[0]["edge"]
    body["spec"]["edge"]["caRef"] = {"name": "edge-ca", "kind": "Secret"}
    assert _render(body)[0]["edge"]["caFile"] == "/var/run/mproxy/ca/ca.crt"


def test_listener_groups_reach_the_sidecar_only_when_given() -> None:
    body = tunnel()
    assert "listenerGroups" not in _render(body)[0]["edge"]  # absent: every listener, as before
    body["spec"]["edge"]["listenerGroups"] = ["gw-a", "gw.b_2", "gw-a"]
    data, text = _render(body)
    assert data["edge"]["listenerGroups"] == ["gw-a", "gw.b_2"]  # read as the sidecar reads it: distinct
    assert load_sidecar_config(text).edge.listener_groups == ("gw-a", "gw.b_2")


def test_unresolved_routes_and_a_default_pointing_at_them_are_left_out() -> None:
    body = tunnel(defaultRoute="ssh")
    spec = parse_spec(body["spec"])
    resolved, unresolved = resolve_routes(spec.routes, {"web": SERVICES["web"]}, "prod")
    data = sidecar_config_dict(spec, resolved)
    assert [r["name"] for r in data["routes"]] == ["web"]
    assert data["defaultRoute"] is None
    assert [u.route.name for u in unresolved] == ["ssh"]
    load_sidecar_config(data)


def test_buffer_limits_pass_through_to_the_sidecar() -> None:
    limits = {"bufferSoftBytes": 4194304, "bufferHardBytes": 16777216, "bufferGraceSeconds": 0.5,
              "tunnelBufferBytes": 33554432, "ipv6PrefixLength": 56}
    data, text = _render(tunnel(limits=limits))
    assert {k: data["limits"][k] for k in limits} == limits
    cfg = load_sidecar_config(text).limits
    assert (cfg.buffer_soft_bytes, cfg.buffer_hard_bytes, cfg.buffer_grace_seconds, cfg.tunnel_buffer_bytes,
            cfg.ipv6_prefix_length) == (4194304, 16777216, 0.5, 33554432, 56)
    spec = parse_spec(tunnel(limits={"bufferSoftBytes": 4194304, "bufferHardBytes": 65536})["spec"])
    with pytest.raises(ConfigError, match=r"limits\.bufferHardBytes"):
        render_config(spec, [])


def test_a_config_the_sidecar_would_refuse_is_caught_before_shipping() -> None:
    spec = parse_spec(tunnel(limits={"maxFrameBytes": 10})["spec"])
    with pytest.raises(ConfigError, match=r"limits\.maxFrameBytes"):
        render_config(spec, [])


def test_config_map_is_owned_by_the_tunnel_and_hashed() -> None:
    body = tunnel()
    _, text = _render(body)
    cm = config_map(body, text)
    assert cm["metadata"]["name"] == "mproxy-shop" and cm["metadata"]["namespace"] == "prod"
    assert cm["data"] == {"config.yaml": text}
    assert cm["metadata"]["labels"]["mproxy.dev/tunnel"] == "shop"
    assert cm["metadata"]["annotations"]["mproxy.dev/config-hash"] == digest(text)
    (owner,) = cm["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "mproxy.dev/v1alpha1",
        "kind": "Tunnel",
        "name": "shop",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_rendering_is_deterministic() -> None:
    assert _render(tunnel())[1] == _render(tunnel())[1]
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 2, "b": 1})
