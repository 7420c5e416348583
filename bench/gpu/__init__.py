"""GPU validation (issue 18): one prepared run that checks and measures the CUDA paths; `validate` is the entry."""
