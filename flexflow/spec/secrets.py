"""A spec holds no secrets: credentials belong in Airflow connections, which the platform team owns.

Specs are written by many people and read by more (the repository, the DAG's docs, the trigger form),
so every string of a spec is searched for credential shapes (:data:`KEY_SHAPES`): prompts,
descriptions, targets, params, tags, mapping keys and values alike, and the text templates assemble
from literals (``{{ 'afk_' ~ 'live...' }}``). Before the search a string is folded to lower case and
stripped of whitespace and invisible characters (Unicode format characters: zero-width spaces, soft
hyphens, ...), so a key cannot be hidden by splitting it. A key whose name says credential
(``password``, ``token``, ``api_key``...) is refused with a hint to use a connection. A message names
the kind of key found, never the key itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from flexflow.contract.schema import Problem
from flexflow.spec.templates import constant_texts
from flexflow.spec.yaml_source import KeyPath


class KeyShape(NamedTuple):
    """One kind of credential: its pattern, and which folded text it is searched in."""

    kind: str
    pattern: re.Pattern[str]
    needs_digit: bool = False  # the shape also fits prose: a real key has a digit in its body
    #: Searched with spaces removed: only shapes no word contains ("afk_", a PEM header, a JWT), so a key
    #: spelled out with spaces is found. The others are searched where a space still ends a word, and
    #: begin after no letter or digit ("risk-free" holds no "sk-" key, "Slovakia 2027" no AWS key).
    compact: bool = False


#: Credential shapes, all matched on text in lower case without invisible characters.
KEY_SHAPES = (
    KeyShape("an Apiframe API key", re.compile(r"afk_[a-z0-9_]{4,}"), compact=True),
    KeyShape("a private key", re.compile(r"-----begin[a-z]{0,20}privatekey"), compact=True),
    # Starts only where a run of token characters starts, once a possessive look-ahead saw the shape: from
    # each "eyj" of a long run the plain pattern rescanned the run (quadratic); same texts match.
    KeyShape(
        "a JSON web token",
        re.compile(
            r"(?<![a-z0-9_-])(?=[a-z0-9_-]*+\.eyj[a-z0-9_-]{10,}+\.)[a-z0-9_-]*?eyj[a-z0-9_-]{10,}\.eyj[a-z0-9_-]{10,}\."
        ),
        compact=True,
    ),
    KeyShape("an AWS access key id", re.compile(r"(?<![a-z0-9])akia[a-z0-9]{16}"), needs_digit=True),
    KeyShape("a secret API key (sk-...)", re.compile(r"(?<![a-z0-9])sk-[a-z0-9_-]{20,}"), needs_digit=True),
    KeyShape("a Stripe secret key", re.compile(r"(?<![a-z0-9])[rs]k_(?:live|test)_[a-z0-9]{10,}")),
    KeyShape("a GitHub token", re.compile(r"(?<![a-z0-9])(?:gh[pousr]_[a-z0-9]{30,}|github_pat_[a-z0-9_]{20,})")),
    KeyShape("a Slack token", re.compile(r"(?<![a-z0-9])xox[abprs]-[a-z0-9-]{10,}")),
    KeyShape("a Google API key", re.compile(r"(?<![a-z0-9])aiza[a-z0-9_-]{35}"), needs_digit=True),
    KeyShape("a bearer token", re.compile(r"(?<![a-z0-9])bearer[:=]?\s*[a-z0-9._~+/-]{20,}"), needs_digit=True),
)
#: Parts of a key's name that say it holds a credential (the name folded: lower case, '-' as '_').
SECRET_WORDS = frozenset({"password", "passwd", "pwd", "secret", "token", "apikey", "credential", "credentials"})
SECRET_PHRASES = ("api_key", "private_key", "access_key", "auth_key", "password", "secret", "credential", "token")

Finding = tuple[KeyPath, str]


def secret_problems(data: Mapping[str, Any]) -> Iterator[Problem]:
    """Keys that name a credential and strings shaped like one, anywhere in the spec."""
    return (Problem(path, message) for path, message in _walk(data, ()))


def _walk(value: object, path: KeyPath) -> Iterator[Finding]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _key(str(key), (*path, key), params=path == ("params",))
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index))
    elif isinstance(value, str):
        kind = key_kind(value)
        if kind:
            yield path, f"this looks like {kind}; credentials belong in an Airflow connection, never in a spec"


def _key(key: str, path: KeyPath, *, params: bool) -> Iterator[Finding]:
    if kind := key_kind(key):  # first: a key that is a credential must not be printed as a name
        # Shown at the mapping that holds it: the key's own path would print the key.
        yield path[:-1], f"a key here looks like {kind}; credentials belong in an Airflow connection, never in a spec"
    elif looks_like_credential_name(key):
        where = (
            "a param is typed into the trigger form and kept with every run; read credentials from an Airflow "
            "connection instead"
            if params
            else "a spec holds no secrets: put the API key in the Airflow connection (connection_id) and storage "
            "credentials in publish.conn_id's connection"
        )
        yield path, f"'{_printable(key)}' looks like a secret; {where}"


@lru_cache(maxsize=4096)
def looks_like_credential_name(key: str) -> bool:
    """``smtp_password``, ``apiKey``, ``X-Api-Key``, ``client_secret``: names of credentials."""
    name = _folded(key, keep_spaces=False).replace("-", "_")
    return bool(SECRET_WORDS & set(name.split("_"))) or any(phrase in name for phrase in SECRET_PHRASES)


@lru_cache(maxsize=4096)
def key_kind(text: str) -> str | None:
    """The kind of credential a text holds (as written, or assembled by its template), if any."""
    candidates = [text, *constant_texts(text)] if "{" in text else [text]
    for candidate in candidates:
        compact, spaced = _folded(candidate, keep_spaces=False), _folded(candidate, keep_spaces=True)
        for shape in KEY_SHAPES:
            for match in shape.pattern.finditer(compact if shape.compact else spaced):
                if not shape.needs_digit or any(char.isdigit() for char in match.group()):
                    return shape.kind
    return None


def _folded(text: str, *, keep_spaces: bool) -> str:
    """Lower case, compatibility forms unified (full-width letters), invisible characters removed."""
    if text.isascii():
        return text.lower() if keep_spaces else "".join(text.split()).lower()
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        char for char in text if unicodedata.category(char) != "Cf" and (keep_spaces or not char.isspace())
    ).lower()


def _printable(key: str) -> str:
    """The key as the message shows it: invisible characters would make the message lie about it."""
    return _folded(key, keep_spaces=True) if not key.isascii() else key
