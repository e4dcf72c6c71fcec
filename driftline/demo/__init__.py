"""driftline demo tooling: the end-to-end demo, the event simulator, the embedded broker."""
