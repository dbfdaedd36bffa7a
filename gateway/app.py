"""The gateway's ASGI app (Starlette): predict, recommend, feedback, health, readiness, metrics."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as Endpoint

from gateway.errors import BadRequest
from gateway.logbook import Logbook
from gateway.models import Deployed, Loaded, Slot, predict_rows, recommend_users
from gateway.shadow import Job, ShadowScorer
from retrain.config import ModelSpec
from retrain.ledger import Ledger, now
from retrain.live.interleave import team_draft
from retrain.live.routing import bucket, route

logger = logging.getLogger(__name__)

MAX_K = 1000


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    errors: Counter
    share: Gauge
    pending: Gauge
    shadow_pending: Gauge
    shadow_skipped: Gauge


def _metrics() -> Metrics:
    reg = CollectorRegistry()
    labels = ("model", "version", "arm", "endpoint")
    return Metrics(
        registry=reg,
        requests=Counter(
            "retrain_gateway_requests", "answers per model, version and arm", labels, registry=reg
        ),
        latency=Histogram(
            "retrain_gateway_latency_seconds",
            "time to score a request, per model, version and arm",
            labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=reg,
        ),
        errors=Counter(
            "retrain_gateway_errors",
            "failed scorings per model, version and arm",
            labels,
            registry=reg,
        ),
        share=Gauge(
            "retrain_gateway_challenger_share",
            "the challenger's traffic share",
            ("model",),
            registry=reg,
        ),
        pending=Gauge(
            "retrain_gateway_log_pending",
            "answers waiting to be written to the ledger",
            registry=reg,
        ),
        shadow_pending=Gauge(
            "retrain_gateway_shadow_pending",
            "shadow scores queued for the next batch",
            registry=reg,
        ),
        shadow_skipped=Gauge(
            "retrain_gateway_shadow_skipped",
            "shadow scores skipped (queue full) since the start; each is logged with its reason",
            registry=reg,
        ),
    )


def fingerprint(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Gateway:
    """The state behind the app: one :class:`Slot` per model, one :class:`Logbook` per ledger."""

    def __init__(self, specs: Sequence[ModelSpec], threads_per_request: int = 1) -> None:
        self.threads_per_request = threads_per_request
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise BadRequest(f"model(s) {dupes} given by more than one --spec: give each once")
        self.ledgers: dict[str, Ledger] = {}
        self.logbooks: dict[str, Logbook] = {}
        self.slots: dict[str, Slot] = {}
        for spec in specs:
            url = spec.state.ledger
            if url not in self.ledgers:
                self.ledgers[url] = Ledger(url)
                self.logbooks[url] = Logbook(self.ledgers[url])
            self.slots[spec.name] = Slot(spec, self.ledgers[url])
        self.metrics = _metrics()
        self.shadow = ShadowScorer(lambda loaded, kind, inputs: self._score(kind, loaded, inputs))

    def logbook(self, slot: Slot) -> Logbook:
        return self.logbooks[slot.spec.state.ledger]

    def start(self) -> None:
        # Concurrency comes from requests: a BLAS pool per call (2 threads here) oversubscribes
        # the cores and spins; one thread per call served ALS 8x faster under 4 concurrent
        # clients (17.8 -> 144.8 recommendations/s, measured in process). OpenBLAS's limit is
        # process-wide; OpenMP pools loaded later read OMP_NUM_THREADS (`retrain gateway` sets it).
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=self.threads_per_request)
        for ledger in self.ledgers.values():
            ledger.migrate()
        for book in self.logbooks.values():
            book.start()
        self.shadow.start()
        for slot in self.slots.values():
            try:
                slot.refresh()
            except Exception as exc:  # not ready yet: the poll keeps trying
                slot.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: cannot load from the registry yet: %s", slot.name, exc)
            slot.start()

    def stop(self) -> None:
        for slot in self.slots.values():
            slot.stop()
        self.shadow.stop()  # score what is queued: its log rows go out with the drain below
        for book in self.logbooks.values():
            book.stop()
        for ledger in self.ledgers.values():
            ledger.dispose()

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, kind: str, loaded: Loaded, inputs: dict[str, Any]) -> Any:
        if kind == "predict":
            return {
                "predictions": predict_rows(
                    loaded, inputs["rows"], bool(inputs.get("probabilities"))
                )
            }
        return {"recommendations": recommend_users(loaded, inputs["users"], inputs["k"])}

    def _timed(
        self, slot: Slot, kind: str, arm: str, loaded: Loaded, inputs: dict[str, Any]
    ) -> tuple[Any, float, str | None]:
        labels = (slot.name, loaded.version, arm, kind)
        start = time.perf_counter()
        try:
            output, error = self._score(kind, loaded, inputs), None
        except Exception as exc:
            output, error = None, f"{type(exc).__name__}: {exc}"
            self.metrics.errors.labels(*labels).inc()
        seconds = time.perf_counter() - start
        self.metrics.latency.labels(*labels).observe(seconds)
        return output, seconds * 1000, error

    def _log(
        self,
        slot: Slot,
        request_id: str,
        key: str,
        arm: str,
        version: str,
        role: str,
        inputs: dict[str, Any],
        output: Any,
        latency_ms: float,
        error: str | None,
    ) -> None:
        self.logbook(slot).put_prediction(
            {
                "request_id": request_id,
                "model": slot.name,
                "version": version,
                "arm": arm,
                "role": role,
                "routing": slot.spec.live.routing,
                "routing_key": key[:200],
                "at": now(),
                "inputs": inputs if slot.spec.live.log_inputs else None,
                "fingerprint": fingerprint(inputs),
                "output": output,
                "latency_ms": latency_ms,
                "error": error,
            }
        )

    def _shadow(
        self,
        slot: Slot,
        kind: str,
        loaded: Loaded,
        request_id: str,
        key: str,
        inputs: dict[str, Any],
    ) -> None:
        """Queue the challenger's shadow score of this request (scored in a batch, logged)."""
        labels = (slot.name, loaded.version, "challenger", kind)

        def done(output: Any, ms: float, error: str | None) -> None:
            self.metrics.latency.labels(*labels).observe(ms / 1000)
            if error is not None:
                self.metrics.errors.labels(*labels).inc()
            self._log(
                slot,
                request_id,
                key,
                "challenger",
                loaded.version,
                "shadow",
                inputs,
                output,
                ms,
                error,
            )

        k = int(inputs.get("k", 0))
        self.shadow.submit(Job((slot.name, loaded.version, kind, k), loaded, inputs, done))

    def answer(self, slot: Slot, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """The response body; a shadow score is queued off the response path."""
        inputs = _inputs(slot, kind, body)
        deployed: Deployed = slot.deployed  # one snapshot for the whole request
        if deployed.champion is None:
            raise LookupError(
                f"model {slot.name!r} has no champion loaded"
                + (f" ({slot.last_error})" if slot.last_error else "")
                + ": promote a version (retrain run manual) and wait for the next alias poll"
            )
        request_id = str(body.get("request_id") or uuid.uuid4().hex)
        key = _routing_key(slot, kind, body, request_id)
        live = slot.spec.live
        self.metrics.share.labels(slot.name).set(
            deployed.share if deployed.challenger is not None else 0.0
        )
        r = route(
            live.routing,
            slot.name,
            key,
            has_challenger=deployed.challenger is not None,
            share=deployed.share,
        )
        base = {"request_id": request_id, "model": slot.name}
        if r.interleave and deployed.challenger is not None:
            return self._interleaved(slot, deployed, request_id, key, inputs, base)
        arm = r.arm if r.arm in ("champion", "challenger") else "champion"
        loaded = deployed.challenger if arm == "challenger" else deployed.champion
        assert loaded is not None
        output, ms, error = self._timed(slot, kind, arm, loaded, inputs)
        self._log(slot, request_id, key, arm, loaded.version, "served", inputs, output, ms, error)
        if error is not None and arm == "challenger":
            # the user never sees a challenger's failure: the champion answers (the error is
            # logged against the challenger, and the guardrail counts it)
            arm, loaded = "champion", deployed.champion
            output, ms, error = self._timed(slot, kind, arm, loaded, inputs)
            self._log(
                slot,
                request_id + ":fallback",
                key,
                arm,
                loaded.version,
                "served",
                inputs,
                output,
                ms,
                error,
            )
        if error is not None:
            raise BadRequest(
                f"model {slot.name!r} version {loaded.version} cannot score it: {error}"
            )
        self.metrics.requests.labels(slot.name, loaded.version, arm, kind).inc()
        if r.shadow and deployed.challenger is not None:
            self._shadow(slot, kind, deployed.challenger, request_id, key, inputs)
        return {**base, "version": loaded.version, "arm": arm, **output}

    def _interleaved(
        self,
        slot: Slot,
        deployed: Deployed,
        request_id: str,
        key: str,
        inputs: dict[str, Any],
        base: dict[str, Any],
    ) -> dict[str, Any]:
        assert deployed.champion is not None and deployed.challenger is not None
        k = inputs["k"]
        a, ms_a, err_a = self._timed(slot, "recommend", "champion", deployed.champion, inputs)
        b, ms_b, err_b = self._timed(slot, "recommend", "challenger", deployed.challenger, inputs)
        if err_a is not None:
            raise BadRequest(f"model {slot.name!r} cannot score it: {err_a}")
        if err_b is not None:  # the champion's list alone; the error counts against the challenger
            self._log(
                slot,
                request_id,
                key,
                "challenger",
                deployed.challenger.version,
                "shadow",
                inputs,
                None,
                ms_b,
                err_b,
            )
            self._log(
                slot,
                request_id,
                key,
                "champion",
                deployed.champion.version,
                "served",
                inputs,
                a,
                ms_a,
                None,
            )
            return {**base, "version": deployed.champion.version, "arm": "champion", **a}
        seed = int(bucket(slot.name, request_id) * 2**32)
        merged, teams = [], []
        for ra, rb in zip(a["recommendations"], b["recommendations"], strict=True):
            items, team = team_draft(ra["items"], rb["items"], k, seed)
            merged.append({"user": ra["user"], "items": [str(i) for i in items]})
            teams.append(list(team))
        version = f"{deployed.champion.version}|{deployed.challenger.version}"
        output = {"recommendations": merged, "teams": teams}
        self._log(
            slot,
            request_id,
            key,
            "interleaved",
            version,
            "served",
            inputs,
            output,
            ms_a + ms_b,
            None,
        )
        self.metrics.requests.labels(slot.name, version, "interleaved", "recommend").inc()
        return {**base, "version": version, "arm": "interleaved", **output}


def _inputs(slot: Slot, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    wanted = "recommend" if slot.family == "als" else "predict"
    if kind != wanted:
        raise BadRequest(
            f"model {slot.name!r} ({slot.family}) answers POST /models/{slot.name}/{wanted}, "
            f"not /{kind}"
        )
    if kind == "predict":
        rows = body.get("rows")
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise BadRequest(
                'send {"rows": [{"column": value, ...}, ...]}: a non-empty list of objects'
            )
        probabilities = body.get("probabilities", False)
        if not isinstance(probabilities, bool):
            raise BadRequest(f"probabilities must be true or false, got {probabilities!r}")
        if probabilities and slot.spec.task != "multiclass":
            raise BadRequest(
                f"model {slot.name!r} is a {slot.spec.task} model: it answers one number per "
                "row; probabilities are for multiclass models, leave it out"
            )
        return {"rows": rows, "probabilities": True} if probabilities else {"rows": rows}
    users = body.get("users")
    if not isinstance(users, list) or not users:
        raise BadRequest('send {"users": ["id", ...], "k": 10}: a non-empty list of user ids')
    k = body.get("k", slot.spec.als.k)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return {"users": [str(u) for u in users], "k": k}


def _routing_key(slot: Slot, kind: str, body: dict[str, Any], request_id: str) -> str:
    field = slot.spec.live.routing_key
    if body.get(field) is not None:
        return str(body[field])
    if kind == "recommend":
        return str(body["users"][0])
    return request_id


FEEDBACK_KEYS = ("label", "labels", "clicks", "rating", "reward")


def create_app(specs: Sequence[ModelSpec], threads_per_request: int = 1) -> Starlette:
    """The app. Models load (and the ledgers migrate) at start-up, never at import."""
    gw = Gateway(specs, threads_per_request)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(gw.start)
        try:
            yield
        finally:
            await run_in_threadpool(gw.stop)

    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    async def _model(request: Request, kind: str) -> Response:
        name = request.path_params["name"]
        slot = gw.slots.get(name)
        if slot is None:
            return _error(404, f"no model {name!r} here; this gateway serves {sorted(gw.slots)}")
        try:
            body = await _body(request)
            result = await run_in_threadpool(gw.answer, slot, kind, body)
        except BadRequest as exc:
            return _error(422 if "cannot score" in str(exc) else 400, str(exc))
        except LookupError as exc:
            return _error(503, str(exc))
        return JSONResponse(result)

    async def predict(request: Request) -> Response:
        return await _model(request, "predict")

    async def recommend(request: Request) -> Response:
        return await _model(request, "recommend")

    async def feedback(request: Request) -> Response:
        try:
            body = await _body(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        items = body.get("feedback", [body])
        if not isinstance(items, list):
            return _error(400, 'send {"request_id": ..., "label": ...} or {"feedback": [...]}')
        rows = []
        for item in items:
            if not isinstance(item, dict) or not item.get("request_id"):
                return _error(400, "every feedback needs the request_id of the answer it is about")
            outcome = {k: item[k] for k in FEEDBACK_KEYS if k in item}
            if not outcome:
                return _error(
                    400, f"feedback for {item['request_id']} carries none of {list(FEEDBACK_KEYS)}"
                )
            rows.append(
                {
                    "request_id": str(item["request_id"]),
                    "model": item.get("model"),
                    "outcome": outcome,
                    "at": now(),
                }
            )
        book = next(iter(gw.logbooks.values()))
        model = str(rows[0]["model"]) if rows else ""
        if model in gw.slots:
            book = gw.logbook(gw.slots[model])
        for row in rows:
            book.put_feedback(row)
        return JSONResponse({"accepted": len(rows)}, status_code=202)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        models = {
            name: {
                "champion": slot.deployed.champion.version if slot.deployed.champion else None,
                "challenger": (
                    slot.deployed.challenger.version if slot.deployed.challenger else None
                ),
                "routing": slot.spec.live.routing,
                "share": slot.deployed.share,
                "error": slot.last_error,
            }
            for name, slot in gw.slots.items()
        }
        ready = all(m["champion"] is not None for m in models.values())
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        gw.metrics.pending.set(sum(b.pending for b in gw.logbooks.values()))
        gw.metrics.shadow_pending.set(gw.shadow.pending)
        gw.metrics.shadow_skipped.set(gw.shadow.skipped)
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Endpoint("/models/{name}/predict", predict, methods=["POST"]),
            Endpoint("/models/{name}/recommend", recommend, methods=["POST"]),
            Endpoint("/feedback", feedback, methods=["POST"]),
            Endpoint("/healthz", healthz),
            Endpoint("/readyz", readyz),
            Endpoint("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
