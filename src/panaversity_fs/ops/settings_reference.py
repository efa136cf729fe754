"""The configuration reference (`docs/configuration.md`), rendered from `Settings` itself.

Regenerate it with `uv run python -m panaversity_fs.ops.settings_reference > docs/configuration.md`;
a test fails when the file and `render_reference()` differ.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from panaversity_fs.config import Settings

COMMAND = "uv run python -m panaversity_fs.ops.settings_reference > docs/configuration.md"
"""The command that regenerates `docs/configuration.md`."""

OTHER = "Other"
"""The section of every setting `SECTIONS` does not name, so none is ever left out."""

SECTIONS: dict[str, tuple[str, ...]] = {
    "Server and transport": (
        "server_host",
        "server_port",
        "allowed_hosts",
        "allowed_origins",
        "max_request_bytes",
        "workers",
        "stateless_http",
        "forwarded_allow_ips",
        "public_without_auth",
    ),
    "Storage": (
        "storage_backend",
        "storage_root",
        "s3_bucket",
        "s3_endpoint",
        "s3_region",
        "s3_access_key_id",
        "s3_secret_access_key",
        "s3_root",
        "storage_threads",
        "storage_timeout",
        "storage_retries",
    ),
    "Database": (
        "database_url",
        "database_pool_size",
        "database_max_overflow",
        "database_pool_timeout",
        "database_statement_timeout",
        "database_connect_timeout",
        "auto_migrate",
    ),
    "Limits": (
        "max_content_bytes",
        "max_inline_asset_bytes",
        "max_asset_bytes",
        "page_bytes",
        "search_time_budget",
        "archive_timeout",
        "manifest_snapshots_kept",
        "idempotency_ttl",
    ),
    "Rate limits, load shedding, deadlines": (
        "rate_limit_reads_per_minute",
        "rate_limit_writes_per_minute",
        "rate_limit_burst",
        "auth_failures_per_minute",
        "max_concurrent_calls",
        "max_waiting_calls",
        "max_call_wait",
        "request_timeout",
    ),
    "Authentication": (
        "jwt_secret",
        "jwks_url",
        "auth_issuer",
        "auth_audience",
        "jwt_algorithms",
        "jwt_leeway",
        "jwks_refresh_interval",
    ),
    "Download and upload URLs": ("public_url", "url_signing_secret", "archive_url_ttl", "asset_url_ttl"),
    "Audit and recovery": (
        "audit_read_batch_interval",
        "audit_checkpoint_secret",
        "audit_checkpoint_interval",
        "audit_checkpoints_kept",
        "recovery_interval",
        "recovery_grace",
        "fsck_interval",
    ),
    "History": ("history_days", "history_min_versions"),
    "Logging": ("log_level",),
}
"""Section title -> the settings listed in it (in `Settings` order, not this one)."""

_SCALARS: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret",
}


def env_names(name: str, field: FieldInfo) -> list[str]:
    """Every environment variable that sets the field `name`, the preferred one first.

    A field with a validation alias answers to its alias names only (pydantic-settings does
    not prefix them); any other field to `env_prefix` + its name. Names are upper-cased, as
    operators write them (matching is case-insensitive).
    """
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        candidates = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        candidates = [alias]
    elif field.alias:
        candidates = [field.alias]
    else:
        candidates = [f"{Settings.model_config.get('env_prefix', '')}{name}"]
    return list(dict.fromkeys(candidate.upper() for candidate in candidates))


def all_env_names() -> set[str]:
    """The environment variable names of every setting."""
    return {env for name, field in Settings.model_fields.items() for env in env_names(name, field)}


def render_reference() -> str:
    """Return the Markdown configuration reference: one table per section, one row per setting."""
    fields = Settings.model_fields
    section_of = {name: title for title, names in SECTIONS.items() for name in names}
    grouped: dict[str, list[str]] = {title: [] for title in [*SECTIONS, OTHER]}
    for name in fields:
        grouped[section_of.get(name, OTHER)].append(name)
    lines = [*_preamble()]
    for title, names in grouped.items():
        if not names:
            continue
        lines += ["", f"## {title}", "", "| variable | type | default | description |", "|---|---|---|---|"]
        lines += [_row(name, fields[name]) for name in names]
    return "\n".join(lines) + "\n"


def _preamble() -> Iterable[str]:
    env_file = Settings.model_config.get("env_file")
    yield "# Configuration reference"
    yield ""
    yield (
        f"> Generated from `panaversity_fs.config.Settings` by `{COMMAND}`: edit the settings' "
        "descriptions in `src/panaversity_fs/config.py`, not this file."
    )
    yield ""
    yield (
        "Every setting is an environment variable (names are case-insensitive; where a setting has "
        "several names, the first one set wins, in the order listed)."
    )
    if isinstance(env_file, str):
        yield f"The same names may be put in a `{env_file}` file in the working directory."
    yield (
        "Lists are JSON, e.g. `PANAVERSITY_ALLOWED_HOSTS='[\"fs.example.com\"]'`. Secrets are never "
        "shown here, only whether they have a default. Some `panaversity-fs` flags override settings "
        "(`panaversity-fs --help`)."
    )


def _row(name: str, field: FieldInfo) -> str:
    variables = "<br>".join(f"`{env}`" for env in env_names(name, field))
    cells = [variables, _type_text(field), _default_text(name, field), _cell(field.description or "")]
    return "| " + " | ".join(cells) + " |"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type_text(field: FieldInfo) -> str:
    text = _annotation_text(field.annotation)
    bounds = [_bound_text(item) for item in field.metadata]
    present = [bound for bound in bounds if bound]
    return _cell(f"{text} ({', '.join(present)})" if present else text)


def _annotation_text(annotation: object) -> str:
    origin = get_origin(annotation)
    arguments = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in arguments)
    if origin in (Union, types.UnionType):
        return " or ".join(_annotation_text(a) for a in arguments if a is not type(None))
    if origin is list and arguments:
        return f"JSON list of {_annotation_text(arguments[0])}s"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _bound_text(item: object) -> str:
    if isinstance(item, annotated_types.Ge):
        return f">= {_number(item.ge)}"
    if isinstance(item, annotated_types.Gt):
        return f"> {_number(item.gt)}"
    if isinstance(item, annotated_types.Le):
        return f"<= {_number(item.le)}"
    if isinstance(item, annotated_types.Lt):
        return f"< {_number(item.lt)}"
    return ""


def _is_secret(annotation: object) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in get_args(annotation))


def _default_text(name: str, field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if _is_secret(field.annotation):
        # A secret default is still a secret: say that there is one, never what it is.
        return "set (hidden)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        text = value.as_posix()
        return f"`{text if value.is_absolute() or text.startswith('.') else './' + text}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`" + (f" ({_size(value)})" if name.endswith("_bytes") else "")
    if isinstance(value, list | tuple | dict):
        return _cell(f"`{json.dumps(value)}`")
    if value == "":
        return "empty"
    return _cell(f"`{value}`")


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _size(value: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale and value % scale == 0:
            return f"{int(value // scale)} {unit}"
    return f"{_number(value)} bytes"


def main() -> None:
    """Print the reference to standard output (UTF-8, whatever the locale)."""
    sys.stdout.buffer.write(render_reference().encode())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
