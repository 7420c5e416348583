"""`Client`: the blocking client of a ddgan server (`AsyncClient` in client/aio.py is the same API, awaited)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from contextlib import closing
from typing import Any

import httpx

from ddgan.client.errors import ConnectionFailedError, JobFailedError, NotFoundError, WaitTimeoutError
from ddgan.client.models import Generation, Image, Job, Model
from ddgan.client.protocol import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    EventParser,
    RetryPolicy,
    api_error,
    generate_body,
    headers,
    image_of,
    image_path,
    job_event,
    retry_after,
)

ProgressCallback = Callable[[Job], None]


class Client:
    """`with Client("http://host:8000", api_key=...) as client: client.generate("mnist", n=16, seed=7)`.

    503 answers are retried per `retry` (honouring `Retry-After`, with jitter); every other error answer raises
    the `ddgan.client.errors` class of its status, built from the server's error shape.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = httpx.Client(
            base_url=self.url, headers=headers(api_key), timeout=timeout_s, transport=transport
        )  # fmt: skip
        self.jobs = Jobs(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call with the retry policy; a 2xx/304 answer, or the typed error of the last answer."""
        attempt = 1
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ConnectionFailedError(f"{method} {self.url}{path}: {exc}") from exc
            if response.status_code < 400:
                return response
            wait = self.retry.delay(attempt, retry_after(response), self._rng) if response.status_code == 503 else None
            if wait is None:
                raise api_error(response)
            self._sleep(wait)
            attempt += 1

    def models(self) -> list[Model]:
        return [Model.from_json(m) for m in self.request("GET", "/v1/models").json()["models"]]

    def generate(
        self,
        dataset: str,
        n: int = 1,
        *,
        seed: int | None = None,
        sampler: str = "ddgan",
        steps: int | None = None,
        timeout_s: float | None = None,
    ) -> Generation:
        """`n` images of seeds `seed`, `seed + 1`, ... (a random seed, returned, when None)."""
        body = generate_body(dataset, n, seed, sampler, steps, timeout_s)
        return Generation.from_json(self.request("POST", "/generate", json=body).json())

    def image(self, dataset: str, seed: int, *, sampler: str = "ddgan", steps: int | None = None) -> Image:
        """The content-addressed PNG of one seed (`GET /v1/images/...`)."""
        params = {"steps": steps} if steps is not None else None
        return image_of(self.request("GET", image_path(dataset, seed, sampler), params=params), seed)

    def images(
        self, dataset: str, seeds: list[int], *, sampler: str = "ddgan", steps: int | None = None
    ) -> list[Image]:
        return [self.image(dataset, seed, sampler=sampler, steps=steps) for seed in seeds]


class Jobs:
    """The async jobs API (`/v1/jobs`): submit, follow, cancel, fetch the result."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(
        self,
        dataset: str,
        n: int = 1,
        *,
        seed: int | None = None,
        sampler: str = "ddgan",
        steps: int | None = None,
        timeout_s: float | None = None,
    ) -> Job:
        body = generate_body(dataset, n, seed, sampler, steps, timeout_s)
        return Job.from_json(self._client.request("POST", "/v1/jobs", json=body).json())

    def get(self, job_id: str) -> Job:
        return Job.from_json(self._client.request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        return Job.from_json(self._client.request("DELETE", f"/v1/jobs/{job_id}").json())

    def result(self, job_id: str) -> Generation:
        return Generation.from_json(self._client.request("GET", f"/v1/jobs/{job_id}/result").json())

    def events(self, job_id: str) -> Generator[Job, None, None]:
        """The job's states as the server streams them (`/v1/jobs/{id}/events`), until it finishes."""
        client = self._client
        try:
            with client._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response)
                parser = EventParser()
                for line in response.iter_lines():
                    for event, data in parser.feed(line):
                        status = job_event(event, data)
                        if status is not None:
                            job = Job.from_json(status)
                            yield job
                            if job.finished:
                                return
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"GET {client.url}/v1/jobs/{job_id}/events: {exc}") from exc

    def wait(
        self,
        job: str | Job,
        *,
        progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
    ) -> Job:
        """Until the job succeeds (returned) or fails / is cancelled (`JobFailedError`); `progress(job)` on every
        update. Follows the event stream, and polls where the server has none or the stream breaks."""
        job_id = job if isinstance(job, str) else job.id
        give_up = None if timeout_s is None else time.monotonic() + timeout_s
        last: Job | None = None
        try:
            with closing(self.events(job_id)) as updates:
                for last in updates:
                    if progress is not None:
                        progress(last)
                    if last.finished or (give_up is not None and time.monotonic() > give_up):
                        break
        except (ConnectionFailedError, NotFoundError) as exc:
            if isinstance(exc, NotFoundError) and exc.type != "not_found":
                raise  # the job itself is unknown (not a server without the events route)
        while last is None or not last.finished:
            if give_up is not None and time.monotonic() > give_up:
                raise WaitTimeoutError(f"job {job_id} not finished after {timeout_s} s")
            if last is not None:
                self._client._sleep(poll_s)
            last = self.get(job_id)
            if progress is not None:
                progress(last)
        if last.state != "succeeded":
            raise JobFailedError(last)
        return last
