"""The path the hook prices: one spelling for every way of writing the same request, and a
refusal for spellings that real upstreams read in different ways.

A client chooses how it spells its URI, and the upstream behind the proxy decides what that
spelling means. When the hook reads a path one way and the upstream another, the client is
served one thing at the price of another (``/api/premium/..;/x`` is ``/api/x`` to Tomcat and a
premium page to most Node or Python routers). So the hook prices each path on the reading that
costs the most, and refuses the spellings whose readings differ in structure:

- decoded once: ``%70remium`` is ``premium``; an escape left after decoding (``%252e``, double
  encoding) is refused, as is an encoded slash or backslash (``%2F``, ``%5C``), a backslash, a
  control character (NUL included), and bytes that are not UTF-8 once decoded, none of which
  the ledger, or the upstream, could take in one agreed way;
- repeated slashes merged (``//api//x`` is ``/api/x``);
- path parameters dropped (``premium;jsessionid=1`` is ``premium``, as Java servers read it);
- trailing dots and spaces of a segment dropped (``premium.`` is ``premium``, as Windows reads
  it);
- a dot segment (``.``, ``..``, also encoded or with parameters, ``..;``) refused: browsers
  resolve them before sending, and upstreams differ on whether they do;
- non-ASCII text in Unicode NFKC form (fullwidth ``ｐｒｅｍｉｕｍ`` is ``premium``), checked
  again after the change (a fullwidth ``／`` is a slash).

Case is the routes' business: they match without regard to case unless told otherwise.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

from quotagate.errors import InvalidPath

_SEGMENT = r"[A-Za-z0-9_~!$&'()*+,=:@-]+"
_PLAIN = re.compile(rf"(?:/{_SEGMENT}(?:\.{_SEGMENT})*)*/?")
"""A path every reading agrees on: segments of unreserved characters, a dot only inside one.
Such a path is its own normalised form; matched whole, it skips every step below."""

_ESCAPE_OF_SEPARATOR = re.compile(rb"%(?:2[fF]|5[cC])")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_UNSAFE_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
"""Control characters (NUL included: PostgreSQL text cannot hold it) and the backslash, a
separator to Windows servers and to WHATWG URL parsers, a plain character to others."""


def normalized_path(uri: str) -> str:
    """The path of ``uri`` a route is priced on (see the module docstring).

    ``uri`` is the raw target as the upstream gets it (percent-encoded, query allowed), as a
    string of bytes decoded as Latin-1, which is how HTTP header values arrive. Raises
    :class:`InvalidPath` for a spelling the hook refuses.
    """
    path = uri.partition("?")[0].partition("#")[0]
    if path[:1] == "/" and _PLAIN.fullmatch(path):
        return path
    return _canonical(path)


def _canonical(path: str) -> str:
    text = _decoded(path)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    if _UNSAFE_CHAR.search(text):
        raise InvalidPath("the path holds a control character or a backslash")
    if "%" in text and _ESCAPE.search(text):
        raise InvalidPath("the path is encoded twice (an escape is left once decoded)")
    segments = [_segment_name(raw) for raw in text.split("/") if raw]
    clean = "/" + "/".join(segments)
    return clean + "/" if segments and text.endswith("/") else clean


def _decoded(path: str) -> str:
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:  # text, not bytes as Latin-1: called from Python
        raw = path.encode("utf-8")
    if b"%" in raw:
        if _ESCAPE_OF_SEPARATOR.search(raw):
            raise InvalidPath("the path holds an encoded slash or backslash (%2F, %5C)")
        raw = unquote_to_bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath("the path is not UTF-8 once decoded") from None


def _segment_name(segment: str) -> str:
    """A segment without its parameters and trailing dots and spaces; a dot segment (or one
    that is nothing but parameters) is refused."""
    name = segment.partition(";")[0].rstrip(". ")
    if not name:
        raise InvalidPath(f"the path holds a dot or empty segment ({segment!r})")
    return name
