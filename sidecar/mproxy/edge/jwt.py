"""JWT HS256 on PyJWT: mint and verify the telebit-style tunnel tokens.

Only HS256 is accepted. The algorithm comes from our configuration, never from the token, so a token
saying `"alg": "none"` or `"alg": "RS256"` is refused before any signature work (the classic JWT
algorithm-confusion attacks); PyJWT is also told `algorithms=["HS256"]`. PyJWT decodes base64url strictly
(a signature with extra characters is refused) and compares signatures in constant time
(hmac.compare_digest). `exp` and `nbf` are checked here against `now` (which the caller may supply: the
edge's clock, a test's) with `leeway`; `require` names claims a token must carry. Error messages never
quote the token itself: tokens are credentials.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jwt as pyjwt

MAX_TOKEN_BYTES = 8192  # telebit tokens are a few hundred bytes; refuse junk before decoding it
ALGORITHM = "HS256"
# RFC 7515 compact form: unpadded base64url segments. PyJWT alone still takes `=` padding.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Telebit tokens need not expire (`mproxy token` without --ttl), so no time claim is required by default;
# exp, nbf and iat, when present, must be numbers.
_TIME_CLAIMS = ("exp", "nbf", "iat")


class TokenError(Exception):
    """A token was refused; the message says why (and never contains the token)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # a short fixed label, safe as a metric label value


def encode(claims: Mapping[str, Any], secret: bytes) -> str:
    """Mint an HS256 JWT for `claims`."""
    if not secret:
        raise ValueError("the signing secret is empty; put a random secret in the secret file")
    with warnings.catch_warnings():  # the secret's length is the operator's choice (docs/edge.md)
        warnings.simplefilter("ignore")
        return pyjwt.encode(dict(claims), secret, algorithm=ALGORITHM)


def _header(token: str) -> dict[str, Any]:
    try:
        return pyjwt.get_unverified_header(token)
    except pyjwt.InvalidTokenError as exc:
        raise TokenError("token is not a JWT (its header is not base64url JSON)", "malformed") from exc


def decode(token: str, secret: bytes, *, now: float | None = None, leeway: float = 0.0,
           require: Sequence[str] = ()) -> dict[str, Any]:
    """Verify an HS256 JWT and return its claims, or raise TokenError.

    Checks, in order: size and shape, header (alg must be HS256), signature, required claims, then `exp`
    and `nbf` against `now` (seconds since the epoch; default the current time) with `leeway` seconds.
    """
    if not secret:
        raise TokenError("the edge has no signing secret configured", "no_secret")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"token longer than {MAX_TOKEN_BYTES} bytes", "malformed")
    if token.count(".") != 2:
        raise TokenError("token is not a JWT (expected three dot-separated parts)", "malformed")
    if not _COMPACT.fullmatch(token):
        raise TokenError("token has characters outside unpadded base64url", "malformed")
    alg = _header(token).get("alg")
    if alg != ALGORITHM:
        raise TokenError(f"token algorithm {str(alg)[:20]!r} is not accepted; only HS256 is", "bad_alg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            claims: dict[str, Any] = pyjwt.decode(
                token, secret, algorithms=[ALGORITHM],
                # time claims are checked below, against the caller's clock
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": False, "verify_iss": False, "require": list(require)})
    except pyjwt.InvalidSignatureError as exc:
        raise TokenError("token signature does not match (wrong secret or altered token)",
                         "bad_signature") from exc
    except pyjwt.InvalidAlgorithmError as exc:
        raise TokenError("token algorithm is not accepted; only HS256 is", "bad_alg") from exc
    except pyjwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the required claim {exc.claim!r}", "bad_claims") from exc
    except pyjwt.InvalidTokenError as exc:  # DecodeError and the rest: not a well-formed token
        raise TokenError(f"token is malformed ({type(exc).__name__})", "malformed") from exc
    for name in _TIME_CLAIMS:
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise TokenError(f"token claim {name!r} must be a number", "malformed")
    current = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None and current > exp + leeway:
        raise TokenError("token has expired; mint a new one with `mproxy token`", "expired")
    nbf = claims.get("nbf")
    if nbf is not None and current + leeway < nbf:
        raise TokenError("token is not valid yet ('nbf' is in the future)", "not_yet_valid")
    return claims
