"""``msde-client`` exit codes and output, and the page server's forwarding."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from client.cli import main
from client.ui import MAX_FORWARD_BYTES, UiServer, in_background, serve
from tests.client.conftest import NO_WORKER_BODY, TOKEN_BODY, FakeService, prediction


def test_predict_prints_a_table_and_exits_0(fake_service: FakeService, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    assert main(["predict", str(tmp_path / "a.jpg"), "--url", fake_service.url]) == 0
    out = capsys.readouterr().out
    assert "a.jpg  100x100  1 face" in out and "happiness 1.00" in out


def test_folder_with_a_bad_file_reports_it_and_exits_1(
    fake_service: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.jpg", "b.png", "c.jpg"):
        (tmp_path / name).write_bytes(b"bad" if name == "b.png" else b"ok")
    bad = {"error": {"code": "undecodable_image", "message": "not an image"}}
    fake_service.respond = lambda m, p, b: (400, bad) if b == b"bad" else (200, prediction())
    summary = tmp_path / "out" / "summary.jsonl"
    code = main(["predict", str(tmp_path), "--url", fake_service.url, "--json",
                 "--summary", str(summary)])
    assert code == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(x["file"]).name for x in lines] == ["a.jpg", "b.png", "c.jpg"]
    assert "error" in lines[1] and "faces" in lines[0] and "faces" in lines[2]
    assert len(summary.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [((400, TOKEN_BODY), 5, "requires a token"), ((503, NO_WORKER_BODY), 4, "no worker ready")],
)
def test_run_ending_errors_have_their_exit_code(
    fake_service: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    reply: tuple, code: int, message: str,
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    fake_service.respond = lambda m, p, b: reply
    argv = ["predict", str(tmp_path / "a.jpg"), "--url", fake_service.url, "--retries", "1"]
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_server_down_exits_3(closed_port_url: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.jpg").write_bytes(b"a")
    assert main(["predict", str(tmp_path / "a.jpg"), "--url", closed_port_url]) == 3
    assert "is it running" in capsys.readouterr().err


@pytest.fixture()
def page_server(fake_service: FakeService) -> Iterator[UiServer]:
    with in_background(serve(fake_service.url, port=0, token="secret")) as server:
        yield server


def _url(server: UiServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_page_is_served_on_loopback(page_server: UiServer) -> None:
    assert page_server.server_address[0] == "127.0.0.1"
    r = requests.get(_url(page_server, "/"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert 'id="canvas"' in r.text and "/api/predict" in r.text and "/api/explain" in r.text


def test_api_calls_are_forwarded_with_the_token(page_server: UiServer,
                                                fake_service: FakeService) -> None:
    r = requests.post(_url(page_server, "/api/explain"), data=b"jpeg",
                      headers={"Content-Type": "image/jpeg"}, timeout=10)
    assert r.status_code == 200 and r.json()["faces"]
    method, path, body, headers = fake_service.seen[-1]
    assert (method, path, body) == ("POST", "/explanations/msde", b"jpeg")
    assert headers["Content-Type"] == "image/jpeg" and headers["Authorization"] == "Bearer secret"
    fake_service.respond = lambda m, p, b: (400, {"error": {"code": "bad_json", "message": "x"}})
    r = requests.post(_url(page_server, "/api/predict"), data=b"{", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"


def test_service_down_and_oversized_bodies_get_an_error_body(closed_port_url: str) -> None:
    with in_background(serve(closed_port_url, port=0)) as server:
        r = requests.post(_url(server, "/api/predict"), data=b"x", timeout=10)
        assert r.status_code == 502 and r.json()["error"]["code"] == "service_unreachable"
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.putrequest("POST", "/api/predict")
        conn.putheader("Content-Length", str(MAX_FORWARD_BYTES + 1))
        conn.endheaders()  # the body is never sent: it is refused on its declared size
        r413 = conn.getresponse()
        assert r413.status == 413
        assert json.loads(r413.read())["error"]["code"] == "payload_too_large"
        conn.close()
        assert requests.get(_url(server, "/etc/passwd"), timeout=10).status_code == 404
