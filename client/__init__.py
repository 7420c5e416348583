"""A typed Python client of the ddgan server (sync `Client`, asyncio `AsyncClient`, both over httpx).

    from ddgan.client import Client
    with Client("http://127.0.0.1:8000") as client:
        generation = client.generate("mnist", n=16, seed=7)
        generation.save("out/")

It imports nothing of the server (or torch): a layering contract in pyproject.toml keeps it so.
"""

from ddgan.client.aio import AsyncClient, AsyncJobs
from ddgan.client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    ConnectionFailedError,
    DeadlineExceededError,
    InvalidRequestError,
    JobFailedError,
    NotAcceptableError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServerError,
    UnavailableError,
    UnsupportedMediaTypeError,
    WaitTimeoutError,
)
from ddgan.client.models import Generation, Image, Job, JobProgress, Latency, Model
from ddgan.client.protocol import NO_RETRIES, RetryPolicy
from ddgan.client.sync import Client, Jobs

__all__ = [
    "NO_RETRIES",
    "APIError",
    "AsyncClient",
    "AsyncJobs",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "Generation",
    "Image",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "JobProgress",
    "Jobs",
    "Latency",
    "Model",
    "NotAcceptableError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RetryPolicy",
    "ServerError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "WaitTimeoutError",
]
