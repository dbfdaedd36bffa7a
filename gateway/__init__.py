"""gateway: the serving gateway (an ASGI app served by uvicorn).

It loads ``champion`` and ``challenger`` of each model from the registry by alias (reloading when
an alias moves), routes each request as the spec's ``[live]`` table says (retrain.live), answers
with the version and arm that answered, and logs every answer and feedback to the ledger off the
response path. Imports no prefect; reaches MLflow only through registry/.
"""
