"""The Gateway API HTTPRoute filters as pure computations: header modifiers, the redirect Location and
the URLRewrite path (see docs/sidecar.md, "HTTP routers").

ReplacePrefixMatch is segment-aware, as the spec's HTTPPathModifier table has it: the matched prefix
(trailing "/" ignored) is cut off the path and the replacement (trailing "/" ignored) put before what
remains, "" becoming "/": /foo/bar with prefix /foo and replacement /xyz is /xyz/bar, with / it is /bar,
and /foo with / is /.

A redirect keeps what it does not replace: scheme, the Host's name (without port), the path and the query.
Its port follows the spec: `port` if given; else, if `scheme` is given, that scheme's well-known port
(so none is written); else the port the client reached (the listener's). A port that is the well-known
one of the Location's scheme (http 80, https 443) is left out.
"""

from __future__ import annotations

from multidict import CIMultiDict

from mproxy.config.http_router import HeaderModifierConfig, PathModifierConfig, RedirectConfig

__all__ = ["modify_headers", "redirect_location", "replace_prefix", "rewrite_path"]

WELL_KNOWN = {"http": 80, "https": 443}


def modify_headers(headers: CIMultiDict[str], mod: HeaderModifierConfig) -> None:
    """Set (replace every value), then add (append), then remove, in place; names case-insensitive."""
    for h in mod.set:
        headers[h.name] = h.value
    for h in mod.add:
        headers.add(h.name, h.value)
    for name in mod.remove:
        headers.popall(name, None)


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """`path` with its leading `prefix` (whole segments, as PathPrefix matched it) replaced."""
    base = prefix.rstrip("/")
    rest = path[len(base):] if path.startswith(base) else path
    if rest == "/" and not base:  # the path is the prefix "/" itself, as /foo is the prefix /foo
        rest = ""
    return (replacement.rstrip("/") + rest) or "/"


def _new_path(mod: PathModifierConfig | None, path: str, prefix: str | None) -> str:
    if mod is None:
        return path
    if mod.type == "ReplaceFullPath":
        assert mod.replace_full_path is not None  # the schema checks it
        return mod.replace_full_path
    assert mod.replace_prefix_match is not None
    return replace_prefix(path, prefix or "/", mod.replace_prefix_match)


def rewrite_path(mod: PathModifierConfig | None, path: str, prefix: str | None) -> str:
    """The URLRewrite path; `prefix` is the PathPrefix the request matched (None: a rule of no path
    prefix, then the whole path is the prefix "/")."""
    return _new_path(mod, path, prefix)


def redirect_location(cfg: RedirectConfig, *, scheme: str, host: str, port: int | None, path: str,
                      query: str, prefix: str | None) -> str:
    """The Location of a RequestRedirect. `scheme`, `host` (no port), `port` (what the client reached)
    and the raw `path` and `query` are the request's."""
    new_scheme = cfg.scheme or scheme
    if cfg.port is not None:
        new_port: int | None = cfg.port
    elif cfg.scheme is not None:
        new_port = None
    else:
        new_port = port
    if new_port == WELL_KNOWN.get(new_scheme):
        new_port = None
    name = cfg.hostname or host
    if ":" in name:  # an IPv6 literal Host
        name = f"[{name}]"
    authority = name if new_port is None else f"{name}:{new_port}"
    new_path = _new_path(cfg.path, path, prefix)
    return f"{new_scheme}://{authority}{new_path}" + (f"?{query}" if query else "")
