"""HTTP routes: generate (POST /generate), images (GET /v1/images/...), models (GET /v1/models), health
(/healthz, /readyz, /metrics), playground (GET /: the web page)."""
