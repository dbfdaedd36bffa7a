"""The one place credentials are taken out of text meant for people and logs.

Every URL that can reach a message, a log record, an MLflow tag or a Prefect artifact passes
through :func:`redact_url` first: database URLs (``postgresql+psycopg://user:password@host/db``)
keep the user and lose the password, HTTP URLs lose a token given as the user part, and query
parameters that carry secrets (``token=``, ``password=``, ``secret=``, ``key=`` ...) lose
their values.
"""

from __future__ import annotations

import re

MASK = "***"
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@?#]*)@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;][^=&;#]*(?:token|passw|pwd|secret|key|sig|credential)[^=&;#]*=)[^&;#]*"
)


def redact_url(url: str) -> str:
    """``url`` with its credentials masked; a URL without any is returned unchanged.

    >>> redact_url("postgresql+psycopg://retrain:s3cret@db:5432/ledger")
    'postgresql+psycopg://retrain:***@db:5432/ledger'
    >>> redact_url("http://ops:s3cret@mlflow:5000")
    'http://ops:***@mlflow:5000'
    >>> redact_url("https://ghp_abc123@mlflow.example")
    'https://***@mlflow.example'
    >>> redact_url("postgresql://retrain@db/ledger?sslmode=require&password=pw")
    'postgresql://retrain@db/ledger?sslmode=require&password=***'
    >>> redact_url("sqlite:////var/lib/retrain/ledger.db")
    'sqlite:////var/lib/retrain/ledger.db'
    """
    match = _USERINFO.match(url)
    if match:
        scheme, userinfo = match["scheme"], match["userinfo"]
        user, colon, _ = userinfo.partition(":")
        if colon:
            safe = f"{user}:{MASK}"
        elif scheme.lower().startswith("http"):
            safe = MASK  # a bare user part of an HTTP URL is a token
        else:
            safe = user
        url = f"{scheme}{safe}@{url[match.end() :]}"
    return _SECRET_QUERY.sub(rf"\1{MASK}", url)
