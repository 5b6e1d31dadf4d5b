"""JWT HS256 with the standard library: mint and verify the telebit-style tunnel tokens.

Only HS256 is accepted. The algorithm comes from our configuration, never from the token, so a token
saying `"alg": "none"` or `"alg": "RS256"` is refused before any signature work (the classic JWT
algorithm-confusion attacks). Signatures are compared in constant time. Error messages never quote the
token itself: tokens are credentials.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

MAX_TOKEN_BYTES = 8192  # telebit tokens are a few hundred bytes; refuse junk before decoding it


class TokenError(Exception):
    """A token was refused; the message says why (and never contains the token)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short fixed label, safe as a metric label value


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str, part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError(f"token {part} is not base64url", "malformed") from exc


def _json_part(text: str, part: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(text, part))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenError(f"token {part} is not JSON", "malformed") from exc
    if not isinstance(value, dict):
        raise TokenError(f"token {part} must be a JSON object", "malformed")
    return value


def _sign(signing_input: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def encode(claims: Mapping[str, Any], secret: bytes) -> str:
    """Mint an HS256 JWT for `claims`."""
    if not secret:
        raise ValueError("the signing secret is empty; put a random secret in the secret file")
    header = _b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(signing_input, secret))}"


def decode(token: str, secret: bytes, *, now: float | None = None, leeway: float = 0.0) -> dict[str, Any]:
    """Verify an HS256 JWT and return its claims, or raise TokenError.

    Checks, in order: shape, header (alg must be HS256), signature (constant time), then `exp` and
    `nbf` against `now` (seconds since the epoch).
    """
    if not secret:
        raise TokenError("the edge has no signing secret configured", "no_secret")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"token longer than {MAX_TOKEN_BYTES} bytes", "malformed")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a JWT (expected three dot-separated parts)", "malformed")
    header_b64, payload_b64, signature_b64 = parts
    header = _json_part(header_b64, "header")
    alg = header.get("alg")
    if alg != "HS256":
        raise TokenError(f"token algorithm {str(alg)[:20]!r} is not accepted; only HS256 is", "bad_alg")
    try:
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    except UnicodeEncodeError as exc:
        raise TokenError("token is not ASCII", "malformed") from exc
    signature = _b64decode(signature_b64, "signature")
    if not hmac.compare_digest(signature, _sign(signing_input, secret)):
        raise TokenError("token signature does not match (wrong secret or altered token)", "bad_signature")
    claims = _json_part(payload_b64, "payload")
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenError("token claim 'exp' must be a number", "malformed")
        if current > exp + leeway:
            raise TokenError("token has expired; mint a new one with `mproxy token`", "expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, int | float) or isinstance(nbf, bool):
            raise TokenError("token claim 'nbf' must be a number", "malformed")
        if current + leeway < nbf:
            raise TokenError("token is not valid yet ('nbf' is in the future)", "not_yet_valid")
    return claims
