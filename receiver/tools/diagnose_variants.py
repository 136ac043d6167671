"""The registered-URL and key mistakes ``diagnose`` tries when a signature does not match.

MetaStudio signs the registered URL exactly as registered (signing-notes.md), so a URL that
differs in scheme, default port, trailing slash or query order from what the receiver is
configured with gives another signature; so does a key with stray whitespace or longer than
MetaStudio keeps. Each variant says what was changed, so the report can name the fix. Pure.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from receiver.config import MAX_KEY_LENGTH

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def url_variants(url: str) -> list[tuple[str | None, str]]:
    """``url`` first (change None), then what users commonly get wrong about it: the other
    scheme, the default port written or left out, a trailing slash, the query in another order.
    Each variant is (what was changed, URL); no URL appears twice."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [(None, url)]
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, port = _host_port(hostport)
    schemes = [parts.scheme]
    if parts.scheme in _DEFAULT_PORTS:
        schemes.append("https" if parts.scheme == "http" else "http")
    pieces = [p for p in parts.query.split("&") if p]
    queries = [parts.query]
    ordered = "&".join(sorted(pieces, key=lambda p: (p.partition("=")[0], p)))
    if ordered != parts.query and len(pieces) > 1:
        queries.append(ordered)
    path_options = [parts.path]
    path_options.append(parts.path[:-1] if parts.path.endswith("/") else parts.path + "/")

    found: list[tuple[str | None, str]] = []
    urls: set[str] = set()
    for scheme in schemes:
        for toggle_port in (False, True):
            for path in path_options:
                for query in queries:
                    changes: list[str] = []
                    if scheme != parts.scheme:
                        changes.append(f"{parts.scheme} → {scheme}")
                    new_port = port
                    if toggle_port:
                        if port is not None:
                            new_port = None
                            changes.append(f"without port {port}")
                        elif scheme in _DEFAULT_PORTS:
                            new_port = _DEFAULT_PORTS[scheme]
                            changes.append(f"with port {new_port}")
                        else:
                            continue
                    if path != parts.path:
                        changes.append(
                            "without the trailing slash"
                            if parts.path.endswith("/")
                            else "with a trailing slash"
                        )
                    if query != parts.query:
                        changes.append("query parameters sorted")
                    netloc = (userinfo + at if at else "") + host
                    if new_port is not None:
                        netloc += ":" + new_port
                    candidate = urlunsplit((scheme, netloc, path, query, ""))
                    if not changes:
                        candidate = url.partition("#")[0]
                    if candidate in urls:
                        continue
                    urls.add(candidate)
                    found.append((", ".join(changes) or None, candidate))
    found.sort(key=lambda item: item[0] is not None)
    return found


def _host_port(hostport: str) -> tuple[str, str | None]:
    if hostport.endswith("]"):  # [IPv6] without a port
        return hostport, None
    host, sep, port = hostport.rpartition(":")
    if sep and port.isascii() and port.isdigit():
        return host, port
    return hostport, None


def key_variants(key: str) -> list[tuple[str | None, str]]:
    """``key`` first (change None), then it stripped and cut to MetaStudio's length."""
    variants: list[tuple[str | None, str]] = [(None, key)]
    stripped = key.strip()
    if stripped and stripped != key:
        variants.append(("without surrounding whitespace", stripped))
    if len(stripped) > MAX_KEY_LENGTH:
        variants.append(
            (f"cut to MetaStudio's {MAX_KEY_LENGTH} characters", stripped[:MAX_KEY_LENGTH])
        )
    return variants
