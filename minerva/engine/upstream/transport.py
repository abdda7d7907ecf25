"""HTTP to an upstream's replicas: streamed completions with timeouts, plain JSON calls, failures as typed errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import httpx

from minerva.core.errors import MinervaError, UpstreamError, UpstreamTimeoutError
from minerva.engine.upstream.config import UpstreamConfig
from minerva.engine.upstream.protocol import error_of
from minerva.engine.upstream.replicas import Replica, ReplicaSet

logger = logging.getLogger(__name__)


def _error_body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return {"error": response.text[:200]}


class UpstreamClient:
    """One async and one sync httpx client shared by every model of one upstream."""

    def __init__(self, config: UpstreamConfig, replicas: ReplicaSet):
        self.config = config
        self.replicas = replicas
        self.headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._async: httpx.AsyncClient | None = None
        self._sync: httpx.Client | None = None

    def _timeout(self, read_s: float | None) -> httpx.Timeout:
        connect = self.config.timeouts.connect_s
        return httpx.Timeout(connect=connect, read=read_s, write=connect, pool=connect)

    @property
    def async_client(self) -> httpx.AsyncClient:
        """The async client (made on first use, on the event loop that uses it)."""
        if self._async is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._async = httpx.AsyncClient(headers=self.headers, timeout=self._timeout(None), limits=limits)
        return self._async

    @property
    def sync_client(self) -> httpx.Client:
        """The blocking client for the engine's synchronous calls (tokenize), run off the event loop."""
        if self._sync is None:
            self._sync = httpx.Client(headers=self.headers, timeout=self._timeout(self.config.timeouts.connect_s * 6))
        return self._sync

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: dict) -> AsyncIterator[AsyncIterator[str]]:
        """POST `body` and yield the response's lines; closing the block closes the upstream request."""
        client = self.async_client
        try:
            response = await client.send(client.build_request("POST", url, json=body), stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"upstream {url} did not connect in time") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {url} unreachable: {type(exc).__name__}") from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                raise error_of(_error_body(response), response.status_code)
            yield lines_of(response, url)
        finally:
            await response.aclose()

    async def get_json(self, url: str, read_s: float | None = None) -> object:
        """GET a JSON document (typed errors for refusal, timeouts, error statuses and non-JSON)."""
        try:
            response = await self.async_client.get(url, timeout=self._timeout(read_s or self.config.timeouts.connect_s))
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"upstream {url} timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {url} unreachable: {type(exc).__name__}") from exc
        return _json_of(response, url)

    async def get_text(self, url: str) -> str:
        """GET a document as text (typed errors for refusal, timeouts and error statuses); /health may be empty."""
        try:
            response = await self.async_client.get(url, timeout=self._timeout(self.config.timeouts.connect_s))
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"upstream {url} timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {url} unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise error_of(_error_body(response), response.status_code)
        return response.text

    def post_sync(self, path: str, body: dict, prefix: str = "") -> object:
        """POST to the first replica that answers (down ones last), taking out those that refuse."""
        tried: list[Replica] = []
        last: MinervaError = UpstreamError(f"upstream {self.config.name}: no replica")
        while (replica := self.replicas.pick(exclude=tuple(tried))) is not None:
            tried.append(replica)
            url = f"{replica.url}{prefix}{path}"
            try:
                return _json_of(self.sync_client.post(url, json=body), url)
            except httpx.HTTPError as exc:
                last = UpstreamError(f"upstream {url} unreachable: {type(exc).__name__}")
                self.replicas.mark_down(replica, str(last))
            except UpstreamError as exc:
                last = exc
                self.replicas.mark_down(replica, str(exc))
        raise last

    async def aclose(self) -> None:
        """Close both clients."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def _json_of(response: httpx.Response, url: str) -> object:
    if response.status_code >= 400:
        raise error_of(_error_body(response), response.status_code)
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError(f"upstream {url} answered something that is not JSON") from exc


async def lines_of(response: httpx.Response, url: str) -> AsyncIterator[str]:
    """The response's lines; a broken connection is an UpstreamError."""
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx.HTTPError as exc:
        raise UpstreamError(f"upstream {url} connection lost mid-stream: {type(exc).__name__}") from exc


@contextlib.contextmanager
def no_error_details() -> Iterator[None]:
    """Log, and swallow, what a background check raised (the check is retried next round)."""
    try:
        yield
    except (MinervaError, httpx.HTTPError, ValueError) as exc:
        logger.debug("upstream check failed: %s", exc)
