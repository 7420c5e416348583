"""HTTP routes: generate (POST /generate), models (GET /v1/models), health (/healthz, /readyz, /metrics)."""
