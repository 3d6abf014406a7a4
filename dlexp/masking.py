"""Secrets in URLs, hidden from everything dlexp prints or writes.

A database URL can carry a secret in three places:

    scheme://user:SECRET@host/db               the password of the userinfo (an unencoded one may
                                               itself hold '@', ':' or '/': it ends at the LAST '@')
    scheme://host/db?password=SECRET&pwd=...   a query parameter whose name says secret (password,
                                               pwd, passwd, sslpassword, secret, token, api_key, ...)
    ...?odbc_connect=DRIVER%3Dx%3BPWD%3DSECRET  a parameter that is itself a connection string

`mask(text)` replaces each of these by `***` wherever such a URL (or a `password=...` pair) appears
in `text`, and also every secret of a URL that this process was given (`remember`), in its raw,
percent-encoded and percent-decoded forms, since drivers repeat them in their own words.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote

STARS = "***"
# a parameter name that says it holds a secret
SECRET_NAME = re.compile(r"pass|pwd|secret|token|auth|credential|api_?key|access_?key|private_?key|signature", re.I)

# scheme://user:PASSWORD@ -- greedy up to the last '@' before a space or a quote: a password may hold '@'.
# Every repetition is bounded and a match starts only where a word does, so that masking stays linear
# in the text (an error line may quote 20,000 characters of user input).
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<head>[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s:/@'\"]{0,200}:)"
                       r"(?P<pw>[^\s'\"]{0,1000})(?P<at>@)")
# name=VALUE where the name says secret; also percent-encoded (name%3DVALUE) inside another parameter
_PAIR = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<name>[A-Za-z0-9_.\-]{0,40}?(?:" + SECRET_NAME.pattern + r")[A-Za-z0-9_.\-]{0,40})"
    r"(?P<eq>=|%3[Dd])(?P<value>(?:[^&;\s'\"#%)\]>]|%(?!26|3[Bb])[0-9A-Fa-f]{2}){1,1000})",
    re.I,
)

_KNOWN: set[str] = set()  # the secrets of every URL this process was given (see `remember`)


def secrets_of(url: str) -> list[str]:
    """The secret values a URL carries: its userinfo password and its secret-named parameters
    (also inside a parameter that is itself a `k=v;k=v` connection string)."""
    found = []
    rest = url.split("://", 1)[1] if "://" in url else ""
    user, colon, _ = rest.partition(":")
    if colon and "@" in rest and not set(user) & set("/@?"):
        start = len(user) + 1
        # up to the last '@' (the password may hold '@'), and to the first one after it (the URL's
        # query may hold one): both, since either may be the one a driver repeats
        found += [rest[start:rest.rfind("@")], rest[start:rest.find("@", start)]]
    query = url.split("?", 1)[1] if "?" in url else ""
    for name, value in parse_qsl(query, keep_blank_values=False):
        if SECRET_NAME.search(name):
            found.append(value)
        for inner in re.split(r"[;&]", value):  # odbc_connect=DRIVER=...;PWD=secret
            k, sep, v = inner.partition("=")
            if sep and v and SECRET_NAME.search(k):
                found.append(v)
    return [s for s in found if s and s != STARS]


def remember(url: str | None) -> None:
    """Mask the secrets of `url` from now on in everything `mask` sees in this process."""
    if url:
        _KNOWN.update(secrets_of(str(url)))


def mask(text, url: str | None = None) -> str:
    """`text` with every secret hidden: URL passwords, secret-named parameters, and the secrets of
    `url` and of every remembered URL anywhere in it."""
    text = str(text)
    known = set(_KNOWN)
    if url:
        known.update(secrets_of(str(url)))
    for secret in sorted(known, key=len, reverse=True):  # longest first: one secret may contain another
        # a secret of one or two characters would turn every such letter into stars; the URL and
        # pair patterns below still hide it where it appears as a password
        if len(secret) < 3:
            continue
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, STARS)
    text = _USERINFO.sub(lambda m: f"{m.group('head')}{STARS}{m.group('at')}", text)
    return _PAIR.sub(lambda m: f"{m.group('name')}{m.group('eq')}{STARS}", text)


def mask_argv(argv: list[str]) -> list[str]:
    """A command line fit to record (meta.json): every argument masked."""
    return [mask(a, a) for a in argv]
