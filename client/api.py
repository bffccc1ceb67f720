"""The Python client of the msde service: one image, many images, a folder, explanations.

Answers are the service's own pydantic models (``handler.schema``), so a client and the
service cannot disagree on a field name. Every failure is an ``MsdeError`` whose message
says what to do: the service is down, the model is not loaded or not ready, a token is
required, or the request was refused (the service's ``{"error": {"code", "message"}}``).
TorchServe answers 503 while no worker can take a request and 507 for the batch in flight
when a worker dies: both are retried a bounded number of times with exponential backoff.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from handler.schema import ExplanationResponse, PredictionResponse

LOG = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_MODEL = "msde"
RETRY_STATUSES = frozenset({503, 507})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_BACKOFF_S = 8.0

ImageSource = str | Path | bytes
Answer = TypeVar("Answer", bound=BaseModel)


class MsdeError(Exception):
    """Something a person has to act on; ``exit_code`` is what ``msde-client`` exits with."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RequestRefused(MsdeError):
    """The service refused this image (``code`` from its error body, e.g. undecodable_image)."""

    exit_code = 1

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message, status)
        self.code = code


class ServerError(MsdeError):
    exit_code = 1


class ServerDown(MsdeError):
    exit_code = 3


class ModelNotLoaded(MsdeError):
    exit_code = 4


class ModelNotReady(MsdeError):
    exit_code = 4


class TokenRequired(MsdeError):
    exit_code = 5


RUN_ENDING = (ServerDown, ModelNotLoaded, ModelNotReady, TokenRequired)


@dataclass(frozen=True)
class Result:
    """One image of a batch: its answer or its error (never both)."""

    source: str
    response: PredictionResponse | None = None
    error: MsdeError | None = None


@dataclass(frozen=True)
class Readiness:
    """What the management API says about the model's workers."""

    model: str
    workers: int
    ready_workers: int

    @property
    def ready(self) -> bool:
        return self.workers > 0 and self.ready_workers == self.workers


def image_files(paths: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Files as given, folders expanded to their images (by suffix, sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            out += sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(path)
    return out


class MsdeClient:
    """A client of one msde service. Thread-safe: each thread gets its own HTTP session."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model: str = DEFAULT_MODEL,
        token: str | None = None,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        management_token: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.model = model
        self.token = token
        self.management_token = management_token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._local = threading.local()

    # -- single requests -------------------------------------------------------------
    def predict(self, image: ImageSource, *, detect: bool = True) -> PredictionResponse:
        return self._post("predictions", image, PredictionResponse, detect=detect)

    def explain(
        self, image: ImageSource, *, target: str | None = None, detect: bool = True
    ) -> ExplanationResponse:
        """Faces with a Grad-CAM heatmap of the predicted expression (or of ``target``)."""
        return self._post("explanations", image, ExplanationResponse, detect=detect,
                          target=target)

    def health(self) -> str:
        """``/ping``'s status ("Healthy" once the frontend is up, even before the model)."""
        r = self._send("GET", f"{self.url}/ping")
        return str(_json(r).get("status", "unknown"))

    def readiness(self) -> Readiness:
        """Workers of the model, from the management API (``/ping`` cannot tell)."""
        r = self._send("GET", f"{self.management_url}/models/{self.model}",
                       token=self.management_token)
        if r.status_code != 200:
            raise _error(r, self.model, self.management_token is not None)
        described = _json(r)
        workers = described[0].get("workers", []) if isinstance(described, list) else []
        ready = sum(1 for w in workers if w.get("status") == "READY")
        return Readiness(self.model, len(workers), ready)

    # -- many images -----------------------------------------------------------------
    def predict_many(
        self,
        images: Iterable[ImageSource],
        *,
        concurrency: int = 4,
        progress: bool = False,
        detect: bool = True,
    ) -> Iterator[Result]:
        """Results in input order, ``concurrency`` requests in flight at most.

        A refused or unreadable image is a ``Result`` with its error and the rest go on;
        the service being down, the model missing or not ready (after the retries) or a
        token being required end the run: every further request would fail the same way.
        """
        items = list(images)
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures: list[Future[Result]] = []
            for item in items:
                fut = pool.submit(self._one, item, detect)
                fut.add_done_callback(lambda _: bar.update())
                futures.append(fut)
            try:
                for fut in futures:
                    result = fut.result()
                    if isinstance(result.error, RUN_ENDING):
                        raise result.error
                    yield result
            finally:
                for fut in futures:
                    fut.cancel()
                bar.close()

    def predict_folder(self, folder: str | Path, *, recursive: bool = False,
                       **kwargs: Any) -> Iterator[Result]:
        return self.predict_many(image_files([folder], recursive), **kwargs)

    def _one(self, item: ImageSource, detect: bool) -> Result:
        name = "<bytes>" if isinstance(item, bytes) else str(item)
        try:
            return Result(name, response=self.predict(item, detect=detect))
        except MsdeError as err:
            return Result(name, error=err)

    # -- HTTP ------------------------------------------------------------------------
    def _post(
        self,
        kind: str,
        image: ImageSource,
        answer: type[Answer],
        *,
        detect: bool,
        target: str | None = None,
    ) -> Answer:
        data = _read(image)
        url = f"{self.url}/{kind}/{self.model}"
        if detect and target is None:
            r = self._send("POST", url, data=data,
                           headers={"Content-Type": "application/octet-stream"})
        else:
            body: dict[str, Any] = {"image": base64.b64encode(data).decode("ascii"),
                                    "detect": detect}
            if target is not None:
                body["target"] = target
            r = self._send("POST", url, json=body)
        if r.status_code != 200:
            raise _error(r, self.model, self.token is not None)
        try:
            return answer.model_validate(_json(r))
        except ValidationError as exc:
            raise ServerError(f"the service answered something that is not a {answer.__name__}"
                              f" ({exc.error_count()} problems); is {self.url} msde?") from None

    def _send(
        self, method: str, url: str, *, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """One request with bounded retries on 503/507; connection failures -> ServerDown.

        ``token`` defaults to the inference token (the management API has its own key).
        """
        headers = dict(kwargs.pop("headers", None) or {})
        token = token if token is not None else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(self.retries + 1):
            try:
                r = self._session().request(method, url, headers=headers,
                                            timeout=self.timeout, **kwargs)
            except requests.ConnectionError:
                raise ServerDown(f"cannot connect to the msde service at {_origin(url)}: is it "
                                 "running? (`make serve` starts it)") from None
            except requests.Timeout:
                raise ServerDown(f"{_origin(url)} did not answer within {self.timeout:g} s"
                                 ) from None
            except requests.RequestException as exc:  # a malformed URL, a broken answer
                raise ServerDown(f"request to {url} failed: {exc}") from None
            if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                return r
            delay = _retry_delay(r, self.backoff * 2**attempt)
            LOG.info("%s answered %d; retry %d/%d in %.1f s", url, r.status_code, attempt + 1,
                     self.retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session


def _read(image: ImageSource) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        raise RequestRefused(f"cannot read {image}: {exc.strerror}", 0, "unreadable_file"
                             ) from None


def _json(r: requests.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {}


def _origin(url: str) -> str:
    parts = requests.utils.urlparse(url)
    return f"{parts.scheme}://{parts.netloc}"


def _retry_delay(r: requests.Response, backoff: float) -> float:
    after = r.headers.get("Retry-After", "")
    if after.isdigit():
        return min(float(after), MAX_BACKOFF_S)
    return min(backoff, MAX_BACKOFF_S) * (0.5 + random.random() / 2)


def _error(r: requests.Response, model: str, had_token: bool) -> MsdeError:
    """The MsdeError for a non-200 answer: ours (``error``) or TorchServe's own body."""
    body = _json(r)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return RequestRefused(f"refused ({r.status_code} {err.get('code')}): "
                              f"{err.get('message')}", r.status_code, str(err.get("code")))
    kind = str(body.get("type", "")) if isinstance(body, dict) else ""
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    status = r.status_code
    if status in (400, 401) and (kind == "InvalidKeyException" or "Token" in message):
        if had_token:
            return TokenRequired("the service refused the token (wrong or expired: TorchServe "
                                 "keys expire; read a fresh one from its key_file.json)", status)
        return TokenRequired("the service requires a token: pass --token (or set MSDE_TOKEN) "
                             "with the inference key from TorchServe's key_file.json", status)
    if status == 404 and kind == "ModelNotFoundException":
        return ModelNotLoaded(f"model {model!r} is not loaded on {_origin(r.url)} ({message})",
                              status)
    if status == 503:
        return ModelNotReady(f"model {model!r} has no worker ready yet; try again when "
                             f"`msde-client health` says ready ({message or 'HTTP 503'})", status)
    if status == 507:
        return ServerError(f"a worker died while answering (HTTP 507), also after retries: "
                           f"{message}", status)
    if 400 <= status < 500:  # refused by TorchServe's frontend (e.g. a body over its limit)
        return RequestRefused(f"refused ({status} {kind}): {message or r.text[:200]}", status,
                              kind or f"http_{status}")
    return ServerError(f"HTTP {status} from {r.url}: {message or r.text[:200]}", status)
