"""ddgan-serve: few-step DDGAN image generation — the generator (`ddgan.model`), training (`ddgan.training`),
export (`ddgan.export`), the inference server (`ddgan.server`) and benchmarks (`ddgan.bench`).

The subpackages live at the repository's top level and are installed under this one import package.
Importing `ddgan` imports nothing heavy (no torch): the command line answers `--help` at once.
"""

__version__ = "0.2.0"
