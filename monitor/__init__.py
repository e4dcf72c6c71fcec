"""driftline's service: configuration, sources, decoding, label join, engine, CLI."""
