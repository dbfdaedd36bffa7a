"""Example Prefect automations on retrain's model events (see docs/operations.md).

- ``notify``: a webhook call on every ``retrain.model.refused`` or ``retrain.model.failed``,
  with the model, the version and the reason or error in its JSON body;
- ``page``: a webhook call (a pager's incoming webhook) when one model fails twice in a row:
  the ``failed`` event whose resource label ``retrain.failures-in-a-row`` is not ``1`` (the
  ledger counts the model's runs that failed one after the other; a run that ends otherwise
  resets it), at most once per model per ``within``.

Both call a Prefect ``Webhook`` block, so the URL (and any secret in it) lives in the block,
not in the automation. ``deploy/automations.py`` creates the block and both automations.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast
from uuid import UUID

from prefect.automations import Automation, CallWebhook, EventTrigger, Posture
from prefect.blocks.webhook import Webhook
from pydantic import SecretStr

from flows.events import FAILED, FAILURES_IN_A_ROW, PREFIX, REFUSED

# the JSON body the webhook receives: Jinja over the triggering event
NOTIFY_BODY = (
    '{"event": "{{ event.event }}", "model": "{{ event.resource.name }}", '
    '"version": "{{ event.payload.version }}", '
    '"why": {{ (event.payload.reason or event.payload.error) | tojson }}, '
    '"flow_run_url": "{{ event.payload.flow_run_url }}"}'
)
PAGE_BODY = (
    '{"page": "retrain model {{ event.resource.name }} failed '
    '{{ event.payload.failures_in_a_row }} times in a row", '
    '"model": "{{ event.resource.name }}", '
    '"failures_in_a_row": {{ event.payload.failures_in_a_row | tojson }}, '
    '"last_error": {{ event.payload.error | tojson }}}'
)


def save_webhook(name: str, url: str, *, overwrite: bool = True) -> UUID:
    """A Webhook block (POST ``url``) saved on the current Prefect server; its document id."""
    block = Webhook(method="POST", url=SecretStr(url), allow_private_urls=True)
    return cast(UUID, block.save(name, overwrite=overwrite))  # sync here: a UUID


def notify(block_id: UUID, model: str | None = None, name: str = "retrain-notify") -> Automation:
    """Call the webhook on every refused or failed retrain (of ``model``, else of any)."""
    return Automation(
        name=name,
        description="retrain: a candidate was refused or a retrain failed",
        trigger=EventTrigger(
            expect={REFUSED, FAILED},
            match={"prefect.resource.id": f"{PREFIX}{model}" if model else f"{PREFIX}*"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=NOTIFY_BODY)],
    )


def page(
    block_id: UUID,
    model: str | None = None,
    within: timedelta = timedelta(hours=24),
    name: str = "retrain-page-failed-twice",
) -> Automation:
    """Call the webhook when the same model fails twice in a row.

    Prefect's triggers count events in a window, and a success between two failures would not
    reset that count; "in a row" is the ledger's: every ``failed`` event carries
    ``retrain.failures-in-a-row`` (this run and the failed runs just before it), and this
    trigger takes the ones where it is not ``1``. Per model (``for_each``), it fires at most once
    per ``within`` (Prefect opens the next window after a firing), so a model that keeps
    failing pages once a window, not on every run.
    """
    return Automation(
        name=name,
        description="retrain: the same model failed twice in a row",
        trigger=EventTrigger(
            expect={FAILED},
            match={
                "prefect.resource.id": f"{PREFIX}{model}" if model else f"{PREFIX}*",
                FAILURES_IN_A_ROW: "!1",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=within,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=PAGE_BODY)],
    )


def create_examples(
    notify_url: str, page_url: str, model: str | None = None, within: timedelta | None = None
) -> list[Automation]:
    """Save both webhook blocks and create both automations on the current Prefect server."""
    notify_block = save_webhook("retrain-notify", notify_url)
    page_block = save_webhook("retrain-page", page_url)
    made = [notify(notify_block, model), page(page_block, model, within or timedelta(hours=24))]
    return [cast(Automation, automation.create()) for automation in made]  # sync: no coroutine
