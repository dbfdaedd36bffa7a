"""The gateway scores each request with one native thread: concurrency comes from requests."""

from __future__ import annotations

import numpy as np  # noqa: F401  (loads the BLAS whose pool the gateway limits)
from threadpoolctl import threadpool_info, threadpool_limits

from gateway.app import Gateway


def blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_a_started_gateway_limits_the_blas_pool_to_its_threads_per_request():
    with threadpool_limits(limits=2, user_api="blas"):  # restored afterwards
        assert blas_threads() == {2}
        gateway = Gateway([], threads_per_request=1)
        gateway.start()
        try:
            assert blas_threads() == {1}
        finally:
            gateway.stop()
