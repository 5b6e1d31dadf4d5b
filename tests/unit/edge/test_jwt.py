"""JWT HS256 and grants: tokens the edge accepts and every way it refuses one."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from mproxy.edge import jwt
from mproxy.edge.auth import Grant, mint, read_secret, verify
from mproxy.edge.jwt import TokenError

SECRET = b"correct horse battery staple"


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_round_trip_and_grant() -> None:
    token = mint(SECRET, domains=["Example.COM"], ports=[5050], ttl=60)
    grant = verify(token, SECRET)
    assert grant.domains == {"example.com"}
    assert grant.ports == {5050}
    assert grant.covers_name("example.com")
    assert grant.covers_name("a.b.example.com")
    assert not grant.covers_name("badexample.com")
    assert not grant.covers_name("example.com.evil.net")
    assert grant.covers_port(5050) and not grant.covers_port(5051)


def test_matches_a_known_vector() -> None:
    # jwt.io's HS256 example, re-signed with our secret by an independent computation below
    import hashlib
    import hmac

    head, body = _b64({"alg": "HS256", "typ": "JWT"}), _b64({"domains": ["x.test"]})
    sig = base64.urlsafe_b64encode(
        hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    ).rstrip(b"=").decode()
    assert jwt.decode(f"{head}.{body}.{sig}", SECRET) == {"domains": ["x.test"]}


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", None])
def test_refuses_other_algorithms(alg: object) -> None:
    good = jwt.encode({"domains": ["x.test"]}, SECRET)
    _, body, sig = good.split(".")
    header = _b64({"alg": alg, "typ": "JWT"} if alg is not None else {"typ": "JWT"})
    for signature in (sig, ""):
        with pytest.raises(TokenError) as err:
            jwt.decode(f"{header}.{body}.{signature}", SECRET)
        assert err.value.reason == "bad_alg"


def test_wrong_secret_and_tampering() -> None:
    token = jwt.encode({"domains": ["a.test"]}, SECRET)
    with pytest.raises(TokenError) as err:
        jwt.decode(token, b"another secret")
    assert err.value.reason == "bad_signature"
    head, _, sig = token.split(".")
    forged = f"{head}.{_b64({'domains': ['b.test']})}.{sig}"
    with pytest.raises(TokenError) as err:
        jwt.decode(forged, SECRET)
    assert err.value.reason == "bad_signature"


def test_expiry_and_not_before() -> None:
    token = mint(SECRET, domains=["a.test"], ttl=10, now=1000)
    assert verify(token, SECRET, now=1005).domains == {"a.test"}
    with pytest.raises(TokenError) as err:
        verify(token, SECRET, now=1011)
    assert err.value.reason == "expired"
    future = jwt.encode({"nbf": 2000}, SECRET)
    with pytest.raises(TokenError) as err:
        jwt.decode(future, SECRET, now=1000)
    assert err.value.reason == "not_yet_valid"


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.x", "e30.!!!.x", "W10.e30.x", "x" * 9000])
def test_malformed_tokens_are_refused_cleanly(token: str) -> None:
    with pytest.raises(TokenError) as err:
        jwt.decode(token, SECRET)
    assert err.value.reason in {"malformed", "bad_alg"}
    assert token[:40] not in str(err.value) or not token


@pytest.mark.parametrize(
    "claims",
    [{"domains": "a.test"}, {"domains": [1]}, {"domains": ["*"]}, {"domains": ["a..test"]},
     {"ports": [0]}, {"ports": [70000]}, {"ports": [True]}, {"ports": "80"}],
)
def test_bad_claims(claims: dict[str, object]) -> None:
    with pytest.raises(TokenError) as err:
        Grant.from_claims(claims)
    assert err.value.reason == "bad_claims"


def test_secret_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    assert read_secret(path) == b"s3cret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_secret(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_secret(tmp_path / "missing")


def test_token_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    secret.write_text("cli-secret\n")
    out = subprocess.run(
        [sys.executable, "-m", "mproxy", "token", "--secret-file", str(secret), "--domain", "app.test",
         "--port", "6000", "--ttl", "1h"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), b"cli-secret")
    assert claims["domains"] == ["app.test"] and claims["ports"] == [6000]
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600
    bad = subprocess.run(
        [sys.executable, "-m", "mproxy", "token", "--secret-file", str(secret)],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "at least one" in bad.stderr


def test_token_cli_verify(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    secret = tmp_path / "secret"
    secret.write_text("cli-secret\n")
    good = mint(b"cli-secret", domains=["app.test"], ports=[6000], ttl=60)
    out = subprocess.run(
        [sys.executable, "-m", "mproxy", "token", "--secret-file", str(secret), "--verify", "-"],
        input=good, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["domains"] == ["app.test"]
    expired = mint(b"cli-secret", domains=["app.test"], ttl=1, now=1000)
    out = subprocess.run([sys.executable, "-m", "mproxy", "token", "--secret-file", str(secret), "--verify",
                          expired], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "refused (expired)" in out.stderr and expired not in out.stderr


@pytest.mark.parametrize("extra", ["==", "=", "A", "!", " "])
def test_a_signature_with_extra_characters_is_refused(extra: str) -> None:
    # Issue 10 item 8: the hand-written decoder padded leniently and accepted `sig + "=="`.
    token = jwt.encode({"domains": ["a.test"]}, SECRET)
    with pytest.raises(TokenError) as err:
        jwt.decode(token + extra, SECRET)
    assert err.value.reason in {"malformed", "bad_signature"}


def test_a_non_canonical_signature_encoding_is_refused() -> None:
    token = jwt.encode({"domains": ["a.test"]}, SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = alphabet[last ^ 1]  # same decoded bytes: the low bits of the last character are padding
    with pytest.raises(TokenError):
        jwt.decode(token[:-1] + twin, SECRET)


def test_required_claims_leeway_and_claim_types() -> None:
    token = jwt.encode({"domains": ["a.test"], "exp": 1000}, SECRET)
    assert jwt.decode(token, SECRET, now=1004, leeway=5)["exp"] == 1000
    with pytest.raises(TokenError) as err:
        jwt.decode(token, SECRET, now=1006, leeway=5)
    assert err.value.reason == "expired"
    with pytest.raises(TokenError) as err:
        jwt.decode(token, SECRET, now=0, require=["sub"])
    assert err.value.reason == "bad_claims" and "'sub'" in str(err.value)
    for claim in ("exp", "nbf", "iat"):
        with pytest.raises(TokenError) as err:
            jwt.decode(jwt.encode({claim: "soon"}, SECRET), SECRET)
        assert err.value.reason == "malformed"
