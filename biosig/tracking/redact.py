"""Keep secrets out of params, tags and artifacts."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|access[_-]?key|credential|auth)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)


def redact_value(value: Any) -> Any:
    """Strip passwords embedded in URLs (postgresql://user:pw@host -> postgresql://user:***@host)."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    return value


def redact(mapping: dict[str, Any]) -> dict[str, Any]:
    """A copy with secret-looking keys masked and URL passwords stripped, recursively."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out[key] = redact(value)
        elif _SECRET_KEY.search(key) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = redact_value(value)
    return out
