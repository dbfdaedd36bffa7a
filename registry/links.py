"""Links into MLflow for people: the page of a model version (no credentials in them)."""

from __future__ import annotations

from urllib.parse import quote

from retrain.redact import redact_url


def version_link(tracking_uri: str, model: str, version: str) -> str:
    """The MLflow UI page of a version when the tracking server is http(s), else its URI.

    >>> version_link("http://mlflow:5000/", "bike", "3")
    'http://mlflow:5000/#/models/bike/versions/3'
    >>> version_link("sqlite:////srv/retrain/mlflow.db", "bike", "3")
    'models:/bike/3'
    """
    if tracking_uri.startswith(("http://", "https://")):
        base = redact_url(tracking_uri).rstrip("/")
        return f"{base}/#/models/{quote(model, safe='')}/versions/{version}"
    return f"models:/{model}/{version}"
