"""Keep secrets out of params, tags, logs and artifacts.

Credentials come only from the environment (MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD, the AWS
variables, libpq's PGPASSWORD or ~/.pgpass, BIOSIG_OPTUNA_STORAGE); a URI that carries a password in a
config key is refused before anything is logged (`refuse_passwords`), and whatever text biosig writes
still passes through `redact_value` as a second line of defence.
"""

from __future__ import annotations

import re
from typing import Any

from biosig.errors import ConfigError

REDACTED = "***"
#: Credential words, matched as whole words of a key (`_`, `-`, `.` separate words): `api_token`, `DB_PASSWORD`
#: and `aws.secret_access_key` are masked; `tokenization`, `max_tokens` and `author` are not.
_SECRET_KEY = re.compile(r"(?:^|[_.-])(?:pass(?:word)?|passwd|pwd|secrets?|token|credentials?|auth|"
                         r"(?:api|access|private)[_-]?key)(?:$|[_.-])", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)

#: Where each URI-valued key's password belongs instead.
_WHERE_INSTEAD = {
    "tracking_uri": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a postgresql:// store: PGPASSWORD "
                    "or ~/.pgpass)",
    "storage": "BIOSIG_OPTUNA_STORAGE (the whole URI) or PGPASSWORD / ~/.pgpass",
}
_DEFAULT_INSTEAD = "the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://, PGPASSWORD for PostgreSQL)"


def has_password(value: Any) -> bool:
    """True for a string holding a URL with `user:password@`."""
    return isinstance(value, str) and _URL_PASSWORD.search(value) is not None


def refuse_passwords(values: dict[str, Any], origin: dict[str, str]) -> None:
    """ConfigError naming the first key whose value (or list item) embeds a password, and the
    environment variable that should carry it."""
    for key, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(has_password(item) for item in items):
            raise ConfigError(
                f"config key '{key}' (from {origin.get(key, 'command line')}) holds a password in a URI; "
                f"biosig never stores one: pass the URI without it and put the secret in "
                f"{_WHERE_INSTEAD.get(key, _DEFAULT_INSTEAD)}")


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
