"""retrain: the domain library of the continual-retraining service.

Config, ingest, feature cache, ledger, trainers, backtest and promotion policy. Imports neither
prefect nor mlflow: the decisions made here are carried out by ``registry`` and ``flows``.
"""

__version__ = "0.1.0"
