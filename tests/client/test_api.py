"""The client's contract: typed answers, bounded retries, clear errors, bounded concurrency."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from client.api import (
    MsdeClient,
    ModelNotLoaded,
    ModelNotReady,
    RequestRefused,
    ServerDown,
    ServerError,
    TokenRequired,
    image_files,
)
from tests.client.conftest import (
    NO_MODEL_BODY,
    NO_WORKER_BODY,
    TOKEN_BODY,
    FakeService,
    prediction,
)


def _client(service: FakeService, **kwargs: object) -> MsdeClient:
    return MsdeClient(service.url, backoff=0.01, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_predict_sends_raw_bytes_and_returns_the_typed_answer(fake_service: FakeService) -> None:
    answer = _client(fake_service).predict(b"\xff\xd8 jpeg bytes")
    assert answer.faces[0].expression.label == "happiness"
    method, path, body, headers = fake_service.seen[0]
    assert (method, path, body) == ("POST", "/predictions/msde", b"\xff\xd8 jpeg bytes")
    assert "Authorization" not in headers


def test_explain_with_a_target_sends_json(fake_service: FakeService) -> None:
    heatmap = {"target": "fear", "box": [10.0, 20.0, 70.0, 90.0], "width": 6, "height": 7,
               "png": "iVBORw0KGgo="}
    explained = prediction()
    explained["faces"] = [{**explained["faces"][0], "heatmap": heatmap}]
    fake_service.respond = lambda m, p, b: (200, explained)
    answer = _client(fake_service).explain(b"img", target="fear")
    assert answer.faces[0].heatmap is not None and answer.faces[0].heatmap.target == "fear"
    _, path, body, _ = fake_service.seen[0]
    sent = json.loads(body)
    assert path == "/explanations/msde" and sent["target"] == "fear"
    assert base64.b64decode(sent["image"]) == b"img"


@pytest.mark.parametrize("status", [503, 507])
def test_503_and_507_are_retried_then_answered(fake_service: FakeService, status: int) -> None:
    replies = iter([(status, NO_WORKER_BODY), (status, NO_WORKER_BODY), (200, prediction())])
    fake_service.respond = lambda m, p, b: next(replies)
    assert len(_client(fake_service).predict(b"img").faces) == 1
    assert len(fake_service.seen) == 3


def test_retries_are_bounded(fake_service: FakeService) -> None:
    fake_service.respond = lambda m, p, b: (503, NO_WORKER_BODY)
    with pytest.raises(ModelNotReady, match="no worker ready"):
        _client(fake_service, retries=2).predict(b"img")
    assert len(fake_service.seen) == 3


def test_our_error_body_is_a_refusal_with_its_code(fake_service: FakeService) -> None:
    body = {"error": {"code": "undecodable_image", "message": "the body is text, not an image"}}
    fake_service.respond = lambda m, p, b: (400, body)
    with pytest.raises(RequestRefused) as info:
        _client(fake_service).predict(b"text")
    assert info.value.code == "undecodable_image" and info.value.status == 400
    assert "the body is text" in str(info.value)
    assert len(fake_service.seen) == 1  # a refusal is not retried


def test_token_required_and_token_refused(fake_service: FakeService) -> None:
    fake_service.respond = lambda m, p, b: (400, TOKEN_BODY)
    with pytest.raises(TokenRequired, match="requires a token"):
        _client(fake_service).predict(b"img")
    with pytest.raises(TokenRequired, match="refused the token"):
        _client(fake_service, token="abc").predict(b"img")
    assert fake_service.seen[-1][3]["Authorization"] == "Bearer abc"


def test_model_not_loaded(fake_service: FakeService) -> None:
    fake_service.respond = lambda m, p, b: (404, NO_MODEL_BODY)
    with pytest.raises(ModelNotLoaded, match="not loaded"):
        _client(fake_service).predict(b"img")


def test_server_down_is_clear(closed_port_url: str) -> None:
    with pytest.raises(ServerDown, match="cannot connect .* is it running"):
        MsdeClient(closed_port_url).predict(b"img")


def test_an_answer_that_is_not_msde_is_an_error(fake_service: FakeService) -> None:
    fake_service.respond = lambda m, p, b: (200, {"predictions": "something else"})
    with pytest.raises(ServerError, match="not a PredictionResponse"):
        _client(fake_service).predict(b"img")


def test_many_images_keep_order_bound_concurrency_and_survive_a_refusal(
    fake_service: FakeService, tmp_path: Path
) -> None:
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"bad" if i == 4 else f"image {i}".encode())
    bad = {"error": {"code": "undecodable_image", "message": "not an image"}}
    fake_service.respond = lambda m, p, b: (400, bad) if b == b"bad" else (200, prediction())
    fake_service.delay = 0.05
    results = list(_client(fake_service).predict_many(paths, concurrency=3))
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.error is None for r in results] == [i != 4 for i in range(10)]
    assert isinstance(results[4].error, RequestRefused)
    assert 1 < fake_service.max_in_flight <= 3


def test_many_images_stop_when_the_server_is_down(closed_port_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    with pytest.raises(ServerDown):
        list(MsdeClient(closed_port_url).predict_many([tmp_path / "a.jpg"]))


def test_folder_lists_images_by_suffix(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "notes.txt", "sub/c.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in image_files([tmp_path])] == ["a.png", "b.JPG"]
    assert [p.name for p in image_files([tmp_path], recursive=True)] == [
        "a.png", "b.JPG", "c.webp"]


def test_readiness_reads_the_management_api(fake_service: FakeService) -> None:
    workers = [{"status": "READY"}, {"status": "UNLOADING"}]
    fake_service.respond = lambda m, p, b: (200, [{"modelName": "msde", "workers": workers}])
    client = MsdeClient("http://127.0.0.1:1", management_url=fake_service.url)
    readiness = client.readiness()
    assert (readiness.workers, readiness.ready_workers, readiness.ready) == (2, 1, False)
    assert fake_service.seen[0][1] == "/models/msde"
