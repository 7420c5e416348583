"""Hot reload of the model registry (SIGHUP, POST /admin/reload) without dropping a request.

The registry file is read and validated first: a broken one is rejected (`RegistryError`, answered 422 or
logged) and the models serving now keep serving. Then, against what is served:

- added models load and warm up on a thread and appear in /v1/models once loaded;
- removed models stop taking requests at once, finish what they hold (each request to its deadline), then close;
- changed models (any registry field, or their weights files on disk) load beside the old one, which keeps
  serving until the new one is warm; a new one that fails to load leaves the old one serving. One whose files
  were touched but whose weights digest is the same is dropped and the old one kept.

Only one reload runs at a time (`ReloadBusyError`, answered 409).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from pathlib import Path

from ddgan.server.engine import ModelState
from ddgan.server.job_schemas import ReloadPlan
from ddgan.server.metrics import ServerMetrics
from ddgan.server.registry import ModelEntry, RegistryError, load_registry
from ddgan.server.runtime import Runtime, ServedModel

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class ReloadBusyError(Exception):
    """The previous reload is still loading its models."""


def files_fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of every file under a model directory: cheap, and changes when the weights do."""
    if not path.is_dir():
        return ()
    found = []
    for root, _, names in os.walk(path):
        for name in names:
            file = Path(root) / name
            stat = file.stat()
            found.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


class RegistryReloader:
    def __init__(self, runtime: Runtime, registry_path: Path, metrics: ServerMetrics) -> None:
        self.runtime = runtime
        self.registry_path = registry_path
        self.metrics = metrics
        self.generation = 0
        self._fingerprints = {e.key: files_fingerprint(e.path) for e in runtime.registry.models}
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def reload(self) -> ReloadPlan:
        """Read the registry and start applying it; raises RegistryError (nothing changed) or ReloadBusyError."""
        if self.busy:
            self.metrics.registry_reload("busy")
            raise ReloadBusyError("a reload is still loading its models; try again when it is done")
        try:
            registry = await asyncio.to_thread(load_registry, self.registry_path)
        except RegistryError:
            self.metrics.registry_reload("rejected")
            raise
        fingerprints = await asyncio.to_thread(lambda: {e.key: files_fingerprint(e.path) for e in registry.models})
        served = {key: model.entry for key, model in self.runtime.models.items()}
        wanted = {entry.key: entry for entry in registry.models}
        added = [wanted[key] for key in wanted if key not in served]
        removed = [key for key in served if key not in wanted]
        changed = [
            wanted[key]
            for key in wanted
            if key in served and (wanted[key] != served[key] or fingerprints[key] != self._fingerprints.get(key))
        ]
        self.generation += 1
        self.runtime.registry = registry
        self._fingerprints = fingerprints
        for key in removed:
            withdrawn = self.runtime.withdraw(key)
            if withdrawn is not None:
                self._retire(withdrawn)
        if added or changed:  # nothing to load: no task, so the next reload is not refused as busy
            self._task = asyncio.create_task(self._load(added, changed), name=f"reload-{self.generation}")
        self.metrics.registry_reload("applied")
        plan = ReloadPlan(
            generation=self.generation,
            added=[entry.name for entry in added],
            removed=[f"{dataset}/{sampler}" for dataset, sampler in removed],
            changed=[entry.name for entry in changed],
            unchanged=[wanted[key].name for key in wanted if key in served and wanted[key] not in changed],
        )
        logger.info("registry reload %d: %s", self.generation, plan.model_dump(exclude={"generation"}))
        return plan

    async def reload_logged(self) -> None:
        """SIGHUP: reload, and log instead of answering when the registry is refused."""
        try:
            await self.reload()
        except (RegistryError, ReloadBusyError) as exc:
            logger.error("registry reload refused, the served models stay as they are: %s", exc)

    async def wait_idle(self) -> None:
        """Until the last reload's models are loaded and swapped in, and retired ones closed (tests, shutdown)."""
        if self._task is not None:
            await asyncio.shield(self._task)
        while self._retiring:
            await asyncio.gather(*self._retiring)

    async def _load(self, added: list[ModelEntry], changed: list[ModelEntry]) -> None:
        for entry in [*added, *changed]:
            fresh = await asyncio.to_thread(self.runtime.load_detached, entry)
            current = self.runtime.models.get(entry.key)
            if current is not None and not self._replaces(fresh, current):
                continue
            previous = self.runtime.install(fresh)
            if previous is not None:
                self._retire(previous)
            logger.info("%s: now serving the reloaded model (%s)", entry.name, fresh.state.value)

    def _replaces(self, fresh: ServedModel, current: ServedModel) -> bool:
        """Swap a changed model only for a better one: warm, and not the same weights under the same entry."""
        name = fresh.entry.name
        if current.state is not ModelState.READY:
            return True  # the old one never served: the new one can only be better or as bad
        if fresh.state is not ModelState.READY:
            logger.error(
                "%s: the reloaded model is %s (%s); the old one keeps serving", name, fresh.state, fresh.reason
            )
        elif (
            fresh.entry == current.entry
            and fresh.info
            and current.info
            and (fresh.info.weights_digest == current.info.weights_digest)
        ):
            logger.info("%s: files touched but the weights digest is unchanged; the old model keeps serving", name)
        else:
            return True
        self._retire(fresh)
        return False

    def _retire(self, served: ServedModel) -> None:
        task = asyncio.create_task(asyncio.to_thread(self.runtime.retire, served), name=f"retire-{served.entry.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)


class SighupHandler:
    """`kill -HUP <pid>` reloads the registry while the app runs (main thread only: where signals arrive)."""

    def __init__(self, reloader: RegistryReloader) -> None:
        self.reloader = reloader
        self.loop = asyncio.get_running_loop()
        self.installed = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
        self._tasks: set[asyncio.Task[None]] = set()
        if self.installed:
            self.loop.add_signal_handler(signal.SIGHUP, self._on_signal)

    def _on_signal(self) -> None:
        logger.info("SIGHUP: reloading the registry %s", self.reloader.registry_path)
        task = self.loop.create_task(self.reloader.reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self.installed:
            self.loop.remove_signal_handler(signal.SIGHUP)
            self.installed = False


def install_sighup(reloader: RegistryReloader) -> SighupHandler:
    return SighupHandler(reloader)
