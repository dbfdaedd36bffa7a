"""flows: the only package that imports Prefect: thin flows and tasks over retrain and registry."""
