"""driftline's outputs: Prometheus metrics, webhooks (with the trigger policy), Kafka and
JSONL alarm sinks, and the dead-letter writers.

Import what you use from its module (``driftline.sinks.webhook``, ...): this package
imports nothing at load, so that loading one sink does not load them all.
"""
