"""Links into Prefect and readable names of runs, built at the edge from Prefect's settings."""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for

from flows.settings import resolve_spec
from retrain.families.lineage import Tag

logger = logging.getLogger(__name__)

FLOW_RUN_URL_TAG = str(Tag.FLOW_RUN_URL)
FLOW_RUN_ID_TAG = str(Tag.FLOW_RUN_ID)


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run (PREFECT_UI_URL, else derived from PREFECT_API_URL);
    None outside a flow run or when no server URL is configured (Prefect's temporary server)."""
    if not flow_run_id:
        return None
    return url_for("flow-run", obj_id=flow_run_id) or None


def run_name(model: str, mode: str, as_of: str | None) -> str:
    """``<model>-<mode>-<as-of>``: the Prefect flow run's and the MLflow run's name.

    >>> run_name("bike", "manual", "2011-04-29")
    'bike-manual-2011-04-29'
    >>> run_name("bike", "scheduled", None)
    'bike-scheduled-latest'
    """
    return f"{model}-{mode}-{as_of or 'latest'}"


def retrain_run_name() -> str:
    """The ``flow_run_name`` of the retrain flow, from its parameters (the spec's model name).

    A spec that cannot be read keeps a generic name: the flow itself reports the error.
    """
    params: dict[str, Any] = flow_run.parameters
    mode = str(params.get("mode", "manual"))
    as_of = params.get("as_of")
    try:
        model = resolve_spec(str(params["spec_path"]), params.get("overrides")).name
    except Exception:  # the flow run reports a bad spec itself
        logger.debug("spec %s unreadable for the run name", params.get("spec_path"))
        model = "retrain"
    return run_name(model, mode, None if as_of is None else str(as_of))


def tag_flow_run(*tags: str) -> None:
    """Add ``tags`` to the current flow run (filterable in the UI); a no-op outside one.

    One API call: the run's current tags are the run context's (what it was created with),
    and the run's own engine client sends the update. Naming is a convenience: an API error is
    logged and the retrain goes on.
    """
    run_id = flow_run.get_id()
    if not run_id:
        return
    current = set(flow_run.get_tags())
    if current.issuperset(tags):
        return
    context = FlowRunContext.get()
    own = context.client if context is not None else None
    try:  # the run's own engine client when it has one, else a client of its own
        with (
            contextlib.nullcontext(own)
            if isinstance(own, SyncPrefectClient)
            else get_client(sync_client=True)
        ) as client:
            client.update_flow_run(UUID(str(run_id)), tags=sorted({*current, *tags}))
    except Exception as exc:  # tags are not worth failing a retrain for
        logger.warning("could not tag flow run %s with %s: %s", run_id, tags, exc)
