"""The inference server: `server.app.create_app` (FastAPI factory) and `ddgan serve` (server.cli)."""
