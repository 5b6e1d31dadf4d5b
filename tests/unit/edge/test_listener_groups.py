"""Listener groups (docs/edge.md): the token claim, the upgrade header, the control channel's check and
scope, the edge and sidecar config keys and the token CLI."""

from __future__ import annotations

import json

import pytest

from mproxy.cli import main
from mproxy.config.edge import load_edge_config
from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import load_sidecar_config
from mproxy.edge.auth import Grant, mint, verify
from mproxy.edge.control import EdgeControl
from mproxy.edge.jwt import TokenError
from mproxy.tunnel.identity import groups_value, parse_groups

SECRET = b"groups-secret"


def test_the_claim_limits_and_tokens_intersect() -> None:
    token = mint(SECRET, domains=["a.test"], listener_groups=["gw-b", "gw-a", "gw-a"])
    grant = verify(token, SECRET)
    assert grant.groups == frozenset({"gw-a", "gw-b"})
    assert verify(mint(SECRET, domains=["a.test"]), SECRET).groups is None  # no claim: any group
    assert grant.allows(frozenset({"gw-a"})) and grant.allows(None)
    assert not grant.allows(frozenset({"gw-a", "gw-c"}))
    other = Grant(frozenset({"b.test"}), groups=frozenset({"gw-b", "gw-c"}))
    assert grant.union(other).groups == frozenset({"gw-b"})  # no token widens another's limit
    assert grant.union(Grant(frozenset({"c.test"}))).groups == frozenset({"gw-a", "gw-b"})
    assert Grant().union(Grant()).groups is None
    for bad in (["bad group!"], "gw-a", [7], [f"g{i}" for i in range(65)]):
        with pytest.raises(TokenError, match="listenerGroups") as info:
            Grant.from_claims({"domains": ["a.test"], "listenerGroups": bad})
        assert info.value.reason == "bad_claims"


def test_the_header() -> None:
    assert parse_groups(None) is None and parse_groups("  ") is None
    assert parse_groups("gw-a, gw-b") == frozenset({"gw-a", "gw-b"})
    assert groups_value(["gw-b", "gw-a"]) == "gw-a,gw-b"
    with pytest.raises(ValueError, match="not a listener group name"):
        parse_groups("gw-a,,gw-b")
    with pytest.raises(ValueError, match="over 64"):
        parse_groups(",".join(f"g{i}" for i in range(65)))


def test_a_token_that_does_not_allow_the_asked_groups_is_refused_with_why() -> None:
    ctl = EdgeControl(SECRET, asked_groups=frozenset({"gw-b"}))
    res = ctl.handle([7, "add_token", mint(SECRET, domains=["a.test"], listener_groups=["gw-a"])])
    assert res.rejected == ["listener_groups_not_allowed"] and ctl.grant.empty
    message = res.replies[0][1]["message"]
    assert "asked for gw-b" in message and "allows only gw-a" in message and "--listener-group" in message
    assert ctl.add_token(mint(SECRET, domains=["a.test"], listener_groups=["gw-a", "gw-b"])) is None
    assert ctl.scope == frozenset({"gw-b"})  # what it asked for


def test_the_scope() -> None:
    free = EdgeControl(SECRET)
    free.add_token(mint(SECRET, domains=["a.test"]))
    assert free.scope is None  # asked for none, no limit: every listener, as before
    limited = EdgeControl(SECRET)
    limited.add_token(mint(SECRET, domains=["a.test"], listener_groups=["gw-a"]))
    assert limited.scope == frozenset({"gw-a"})  # asked for none: the token's groups
    limited.add_token(mint(SECRET, domains=["b.test"], listener_groups=["gw-b"]))
    assert limited.scope == frozenset()  # two limits that do not meet: no listener at all
    asked = EdgeControl(SECRET, asked_groups=frozenset({"gw-a"}))
    asked.add_token(mint(SECRET, domains=["a.test"]))
    assert asked.scope == frozenset({"gw-a"})


def test_edge_listener_groups() -> None:
    cfg = load_edge_config("""
auth: {secretFile: s}
listeners:
  - {kind: tls, listen: "127.0.0.2:443", group: gw-a}
  - {kind: tls, listen: "127.0.0.3:443", group: gw-b}
  - {kind: tcp, listen: "127.0.0.2:5432", group: gw-a}
  - {kind: tcp, listen: "127.0.0.3:5432", group: gw-b}
  - {kind: tcp, listen: "127.0.0.4:5432"}
""")
    assert [item.group for item in cfg.listeners] == ["gw-a", "gw-b", "gw-a", "gw-b", None]
    assert cfg.listeners[0].to_dict()["group"] == "gw-a" and "group" not in cfg.listeners[4].to_dict()
    assert load_edge_config(cfg.to_yaml()) == cfg
    for listeners, path, words in [
        ('[{kind: tls, listen: ":443", group: "a b"}]', "listeners[0].group", "listener group name"),
        ('[{kind: tcp, listen: "127.0.0.2:1", group: g}, {kind: tcp, listen: "127.0.0.3:1", group: g}]',
         "listeners", "in group g"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_edge_config(f"auth: {{secretFile: s}}\nlisteners: {listeners}")
        assert info.value.path == path and words in str(info.value)


def test_sidecar_listener_groups() -> None:
    cfg = load_sidecar_config("edge: {urls: ['ws://h/'], listenerGroups: [gw-a, gw-a, gw-b]}")
    assert cfg.edge.listener_groups == ("gw-a", "gw-b")
    assert cfg.edge.to_dict()["listenerGroups"] == ["gw-a", "gw-b"]
    assert "listenerGroups" not in load_sidecar_config("edge: {urls: ['ws://h/']}").edge.to_dict()
    assert load_sidecar_config(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError) as info:
        load_sidecar_config("edge: {urls: ['ws://h/'], listenerGroups: [ok, 'not ok']}")
    assert info.value.path == "edge.listenerGroups[1]"


def test_the_token_cli(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    secret.write_text("cli-secret\n")
    assert main(["token", "--secret-file", str(secret), "--domain", "a.test", "--listener-group", "gw-a",
                 "--listener-group", "gw-b"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify(token, b"cli-secret").groups == frozenset({"gw-a", "gw-b"})
    assert main(["token", "--secret-file", str(secret), "--verify", token]) == 0
    assert json.loads(capsys.readouterr().out)["listenerGroups"] == ["gw-a", "gw-b"]
    assert main(["token", "--secret-file", str(secret), "--domain", "a.test", "--listener-group", "a b"]) == 2
    assert "listenerGroups" in capsys.readouterr().err
    # A group alone is a grant (every name and port of its listeners); nothing at all is not.
    assert main(["token", "--secret-file", str(secret), "--listener-group", "gw-a"]) == 0
    assert verify(capsys.readouterr().out.strip(), b"cli-secret").wide == frozenset({"gw-a"})
    assert main(["token", "--secret-file", str(secret)]) == 2
    assert "--listener-group" in capsys.readouterr().err


def test_the_claim_grants_its_groups_whole_and_no_claim_grants_none() -> None:
    listed = verify(mint(SECRET, listener_groups=["gw-a", "gw-b"]), SECRET)
    assert listed.wide == frozenset({"gw-a", "gw-b"}) and not listed.empty  # a token may grant a group only
    assert verify(mint(SECRET, domains=["a.test"]), SECRET).wide == frozenset()  # unrestricted: no capture
    assert verify(mint(SECRET), SECRET).empty
    # Another token's limit narrows the group-wide part as it narrows the groups; a token without the
    # claim adds nothing to it.
    assert listed.union(Grant(groups=frozenset({"gw-b"}), wide=frozenset({"gw-b"}))).wide == {"gw-b"}
    assert listed.union(Grant(frozenset({"c.test"}))).wide == frozenset({"gw-a", "gw-b"})
    assert Grant(frozenset({"c.test"})).union(Grant(frozenset({"d.test"}))).wide == frozenset()


def test_a_tunnel_served_on_its_token_groups_is_granted_them_whole() -> None:
    from mproxy.edge.table import TunnelDirectory

    class Session:
        def __init__(self, control: EdgeControl) -> None:
            self.control, self.active_streams, self.accepting = control, 0, True

        @property
        def listener_groups(self) -> frozenset[str] | None:
            return self.control.scope

    table: TunnelDirectory[Session] = TunnelDirectory()
    none_asked = Session(EdgeControl(SECRET))
    assert none_asked.control.add_token(mint(SECRET, listener_groups=["gw-a"])) is None
    table.set_grant(none_asked, none_asked.control.grant)
    assert table.pick_name("anything.test", group="gw-a") is none_asked
    free = Session(EdgeControl(SECRET))
    free.control.add_token(mint(SECRET, domains=["a.test"]))
    table.set_grant(free, free.control.grant)
    assert table.wide_groups(free) == frozenset() and table.pick_name("a.test", group="gw-a") is free
