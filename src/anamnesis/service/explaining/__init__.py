"""POST /v1/explain: why a prediction, and which similar past patients (docs/explain.md).

`resources` holds what one API process keeps for explanations (the rate limiter, the neighbour indexes,
the attribution thread) and imports no attribution library: the dependency aliases of every route
reach it. Only `explainer` uses the attribution adapter (learner.attribution, captum), imported on the
first explanation; the prediction path never reaches either (import-linter).
"""
