"""anamnesis: a continual-learning model service for clinical text.

Layers (import-linter enforces the direction): `service` -> {`learner`, `monitor`} -> `storage`;
`cohort` (the synthetic cohort simulator) depends on `storage`'s field schema only.
"""
