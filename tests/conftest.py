"""Every test process computes on one thread unless a test says otherwise.

The commands and the server default to the CPUs a process may use (`ddgan.model.threads`) and honour
`OMP_NUM_THREADS` first: set before torch is imported, it keeps in-process commands, spawned servers and torch
itself at one thread on the shared test machine (OpenMP spinning under oversubscription slows tiny models 100x).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
