"""The Ray Serve engine: one deployment per registry model, the same HTTP app as the ingress (`.[ray]` extra)."""
