"""Background batch jobs (`/batches`): JSONL inputs, their SQLite store, and the runner that feeds them
through the engine's low-priority lane."""
