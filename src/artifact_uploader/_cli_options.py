"""The command line's shared vocabulary: exit codes, usage errors, and typed store options.

``--provider-kwarg KEY=VALUE`` values are strings on the command line: the typed ones are
converted here, and every value that may be a secret is remembered by a :class:`Scrubber` so
that nothing the command prints ever shows it (the ``resume`` command it suggests included).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._errors import ConfigError, StagingError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_INTERRUPTED = 130

# After Ctrl-C, uploads in flight get this long to finish before they are cancelled.
INTERRUPT_CLOSE_TIMEOUT = 3.0
DEFAULT_CONCURRENCY = 8

# --provider-kwarg values are strings on the command line. These options take typed values, so
# "true"/"false", "none" and numbers are converted for them.
TYPED_OPTIONS = frozenset(
    {
        "secure",
        "port",
        "fsync",
        "verify",
        "checksum",
        "max_pool_connections",
        "connect_timeout",
        "read_timeout",
        "connection_timeout",
        "resumable_threshold",
        "timeout",
        "min_throughput",
    }
)
# Options known to hold no secret (shown in messages as given). Every other option's value is
# treated as a secret: kept a string, never printed, and scrubbed from anything printed.
PUBLIC_OPTIONS = TYPED_OPTIONS | frozenset(
    {
        "region",
        "region_name",
        "endpoint_url",
        "host",
        "api_root",
        "api_version",
        "checksum_mode",
        "account_url",
        "account_name",
        "service_file",
    }
)
# Shorter secrets are not scrubbed: replacing every "ab" in the output would garble it, and a
# two-character secret protects nothing.
_MIN_SCRUBBED = 4


class UsageError(Exception):
    """A problem with the command line found after argparse (exit 2)."""


def prog() -> str:
    """The command's name as the user typed it (for messages and suggested commands)."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m artifact_uploader" if argv0 == "__main__.py" else "artifact-uploader"


def describe(exc: BaseException) -> str:
    """``Type: message``, as every error line prints an exception."""
    return f"{type(exc).__name__}: {exc}"


def opening_failure(command: str, store: str, exc: Exception) -> tuple[int, str]:
    """The exit code and message for a store that could not be opened.

    A bad option or staging folder is a usage error (2); anything the store answered, or
    failed to answer, is exit 3: nothing was sent.
    """
    if isinstance(exc, (ConfigError, StagingError)):
        return EXIT_USAGE, f"{prog()} {command}: error: {exc}"
    return EXIT_STORE, f"error: cannot open the store {store}: {exc}"


# -- secrets -----------------------------------------------------------------------------------


class Scrubber:
    """Replaces secret values (from --provider-kwarg) in anything the command prints."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted(
            {s for s in secrets if len(s) >= _MIN_SCRUBBED}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def obj(self, value: Any) -> Any:
        """Scrub every string inside a JSON-like value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.obj(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.obj(v) for v in value]
        return value


def _coerce(value: str) -> Any:
    low = value.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def parse_provider_kwargs(items: Sequence[str]) -> tuple[dict[str, Any], Scrubber]:
    """Turn ``KEY=VALUE`` strings into provider options, and a scrubber for their secrets.

    Values of typed options (``secure``, ``port``, timeouts...) are converted from
    ``true``/``false``/``none``/numbers; every other value stays a string.

    Raises:
        UsageError: An item without ``=`` or a key given twice. The value is never echoed.
    """
    options: dict[str, Any] = {}
    secrets: list[str] = []
    for i, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            # Not echoed: the text may well be a secret typed without its key.
            raise UsageError(
                f"--provider-kwarg #{i} must look like KEY=VALUE (its text is not shown: "
                "it may be a secret)"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--provider-kwarg #{i}: the key must be an option name")
        if key in options:
            raise UsageError(f"--provider-kwarg {key} is given twice")
        if key.lower() in TYPED_OPTIONS:
            options[key] = _coerce(value)
        else:
            options[key] = value
            if key.lower() not in PUBLIC_OPTIONS:
                secrets.append(value)
    return options, Scrubber(secrets)


def resume_command(args: argparse.Namespace, staging_dir: str) -> tuple[str, list[str]]:
    """The ``resume`` command that finishes ``staging_dir`` into the same store.

    It carries ``--to`` and every ``--provider-kwarg`` the user gave, shell-quoted, so that,
    copied as printed, it targets the same store (endpoint, region...). A secret option's
    value is never printed: it becomes a ``<KEY>`` placeholder.

    Returns:
        The command line, and the keys whose values were replaced by placeholders.
    """
    words = [*prog().split(), "resume", staging_dir, "--to", args.store]
    hidden: list[str] = []
    for item in args.provider_kwarg:
        key, _, value = item.partition("=")
        key = key.strip()
        if key.lower() in PUBLIC_OPTIONS:
            words += ["--provider-kwarg", f"{key}={value}"]
        else:
            words += ["--provider-kwarg", f"{key}=<{key}>"]
            hidden.append(key)
    if args.concurrency != DEFAULT_CONCURRENCY:
        words += ["--concurrency", str(args.concurrency)]
    return shlex.join(words), hidden


def hidden_note(hidden: Sequence[str]) -> str:
    """The note under a suggested command whose secret values became placeholders."""
    names = ", ".join(f"<{k}>" for k in hidden)
    return (
        f"  (replace {names} with the value(s) you gave: secrets are not printed; or leave "
        "them out and give the credentials through the provider's environment variables)"
    )


# -- store URIs --------------------------------------------------------------------------------

# "scheme:" at the start (two characters or more, so a drive-letter-like "c:" is not one).
_SCHEME_LIKE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def store_uri(to: str, what: str = "--to") -> str:
    """``--to`` as a store URI: a plain local path becomes a ``file://`` URI.

    Text that looks like a URI but is not a well-formed one (``s3:/bucket``, ``s3:bucket``,
    ``gs:/b``, ``az:container``, ``s3//bucket``) is refused instead of being taken as a local
    folder named ``s3:``: uploads would land on the local disk and the command report success.
    ``scheme://...`` is left to the library, which checks the scheme and the rest.

    Raises:
        UsageError: Empty, or URI-like but malformed (the message suggests the fix).
    """
    if not to:
        raise UsageError(f"{what} must not be empty")
    if "://" in to:
        return to
    schemes = sorted(_known_schemes())
    match = _SCHEME_LIKE.match(to) or re.match(rf"({'|'.join(schemes)})/+", to, re.IGNORECASE)
    if match:
        scheme = match.group(1).lower()
        rest = to[match.end() :].lstrip("/")
        fix = f"file:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
        hint = f"did you mean {fix}? " if scheme in schemes else ""
        raise UsageError(
            f"{what} {to!r} looks like a store URI but is not a well-formed one "
            f"(expected scheme://..., schemes: {', '.join(schemes)}); {hint}"
            f"for a local folder of that name, write ./{to}"
        )
    return Path(to).expanduser().absolute().as_uri()


def _known_schemes() -> frozenset[str]:
    from ._registry import _SCHEMES

    return frozenset(_SCHEMES)


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
