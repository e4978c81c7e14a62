"""Object-name templates and rank discovery (torch.distributed when initialised, else env vars)."""

from __future__ import annotations

import os
import secrets
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import ConfigError

FIELDS = (
    "artifact_name",
    "run_name",
    "rank",
    "local_rank",
    "world_size",
    "local_world_size",
    "node_rank",
)

_ENV = {
    "rank": ("RANK", 0),
    "local_rank": ("LOCAL_RANK", 0),
    "world_size": ("WORLD_SIZE", 1),
    "local_world_size": ("LOCAL_WORLD_SIZE", 1),
    "node_rank": ("NODE_RANK", 0),
}


@dataclass(frozen=True, slots=True)
class DistInfo:
    """Where this process sits in a distributed job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0


def _env_int(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {var}={raw!r} is not an integer") from None


def dist_info() -> DistInfo:
    """Read ranks from ``torch.distributed`` if it is initialised, else from the environment.

    torch is only consulted if something already imported it: importing it here would cost
    seconds for jobs that never use it.
    """
    values = {field: _env_int(var, default) for field, (var, default) in _ENV.items()}
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        values["rank"] = int(dist.get_rank())
        values["world_size"] = int(dist.get_world_size())
    return DistInfo(**values)


def default_run_name() -> str:
    """``RUN_NAME`` from the environment, else a generated ``run-<unix time>-<random>`` name."""
    env = os.environ.get("RUN_NAME")
    if env:
        return env
    return f"run-{int(time.time())}-{secrets.token_hex(3)}"


def check_template(
    template: object, fields: Sequence[str], option: str = "object_name", *, empty: bool = False
) -> str:
    """Validate a :meth:`str.format` object-name template that may use only named ``fields``.

    Args:
        template: The template.
        fields: The field names it may use.
        option: The option's name, for the error message.
        empty: Accept ``""``.

    Raises:
        ConfigError: Not a str (or empty, unless ``empty``), malformed, or a positional or
            unknown field.
    """
    if not isinstance(template, str) or not (template or empty):
        kind = "a str" if empty else "a non-empty str"
        raise ConfigError(f"{option} must be {kind}, got {template!r}")
    available = ", ".join("{" + f + "}" for f in fields)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"malformed {option} template {template!r}: {exc}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split(".")[0].split("[")[0]
        if base == "" or base.isdigit():
            raise ConfigError(
                f"{option} template {template!r} uses a positional field; "
                f"use named fields: {available}"
            )
        if base not in fields:
            raise ConfigError(
                f"{option} template {template!r} has unknown field {{{field}}}; "
                f"available: {available}"
            )
    return template


class NameTemplate:
    """A validated ``object_name`` format string.

    Args:
        template: A :meth:`str.format` string using only the fields in :data:`FIELDS`.

    Raises:
        ConfigError: An unknown or positional field, or a malformed format string.
    """

    def __init__(self, template: str) -> None:
        check_template(template, FIELDS, empty=True)
        self.template = template

    def __repr__(self) -> str:
        return f"NameTemplate({self.template!r})"

    def format(self, artifact_name: str, run_name: str) -> str:
        """Render the name for ``artifact_name``; leading slashes are stripped."""
        info = dist_info()
        name = self.template.format(
            artifact_name=artifact_name,
            run_name=run_name,
            rank=info.rank,
            local_rank=info.local_rank,
            world_size=info.world_size,
            local_world_size=info.local_world_size,
            node_rank=info.node_rank,
        )
        return name.lstrip("/")
