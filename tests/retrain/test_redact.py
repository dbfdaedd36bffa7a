from __future__ import annotations

import doctest

import pytest

from retrain import redact
from retrain.redact import redact_url


def test_the_doctests_of_redact_url_hold():
    result = doctest.testmod(redact, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+psycopg://u:p%40ss%3Aw0rd@h/db", "p%40ss%3Aw0rd"),
        ("mysql+pymysql://u:pw-1@h:3306/db?charset=utf8", "pw-1"),
        ("https://tok-123@mlflow.example/api", "tok-123"),
        ("http://mlflow:5000/?access_token=tok-456&x=1", "tok-456"),
        ("postgresql://u@h/db?sslpassword=pw-2", "pw-2"),
        ("s3://bucket/path?X-Amz-Signature=sig-3", "sig-3"),
    ],
)
def test_no_secret_survives_redaction(url, secret):
    assert secret not in redact_url(url)
    assert "***" in redact_url(url)
