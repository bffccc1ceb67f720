"""deploy/healthcheck.py's pure parts: config reading, in-flight detection, probe image."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.deploy.tooling import REPO, load_script

hc = load_script(REPO / "deploy" / "healthcheck.py")

# `ss -tinH state established '( sport = :18080 )'` as printed on Debian 12 (iproute2 6.1);
# the long detail lines are the real output, kept whole
IDLE_KEEPALIVE = """\
0      0      [::ffff:127.0.0.1]:18080 [::ffff:127.0.0.1]:59888
\t bbr wscale:10,10 rto:204 rtt:0.032/0.017 ato:40 mss:32768 cwnd:11 bytes_sent:246 bytes_acked:246 bytes_received:107 segs_out:3 segs_in:5 data_segs_out:1 data_segs_in:2 send 90112000000bps lastsnd:308 lastrcv:576 lastack:308 delivered:2 app_limited rcv_space:65483 minrtt:0.029 snd_wnd:65536
"""
IN_FLIGHT = """\
0      0      [::ffff:127.0.0.1]:18080 [::ffff:127.0.0.1]:59888
\t bbr wscale:10,10 rto:204 rtt:0.032/0.017 ato:40 mss:32768 cwnd:11 bytes_sent:246 bytes_acked:246 bytes_received:212 segs_out:5 segs_in:7 data_segs_out:1 data_segs_in:4 send 90112000000bps lastsnd:820 lastrcv:508 lastack:508 delivered:2 app_limited rcv_space:65483 minrtt:0.029 snd_wnd:65536
"""
FIRST_REQUEST = """\
0      0      127.0.0.1:8080 127.0.0.1:40000
\t cubic wscale:7,7 rto:204 rtt:0.05/0.025 mss:32768 cwnd:10 bytes_received:5120 segs_in:3 data_segs_in:2 lastsnd:900 lastrcv:12 lastack:12
"""
FRESH_CONNECTION = """\
0      0      127.0.0.1:8080 127.0.0.1:40002
\t cubic wscale:7,7 rto:204 rtt:0.05/0.025 mss:32768 cwnd:10 segs_in:1 lastsnd:40 lastrcv:40 lastack:40
"""
RESPONSE_GOING_OUT = """\
0      65536  127.0.0.1:8080 127.0.0.1:40004
\t cubic wscale:7,7 rto:204 rtt:0.05/0.025 mss:32768 cwnd:10 bytes_sent:4096 bytes_received:300 lastsnd:1 lastrcv:30 lastack:1
"""


@pytest.mark.parametrize(
    ("sample", "busy"),
    [(IDLE_KEEPALIVE, False), (IN_FLIGHT, True), (FIRST_REQUEST, True),
     (FRESH_CONNECTION, False), (RESPONSE_GOING_OUT, True)],
)
def test_connection_is_busy_only_while_a_request_awaits_its_response(
    sample: str, busy: bool
) -> None:
    (sock,) = hc.split_sockets(sample)
    assert hc.socket_busy(sock) is busy


def test_in_flight_counts_each_busy_connection_once() -> None:
    sockets = hc.split_sockets(IDLE_KEEPALIVE + IN_FLIGHT + FIRST_REQUEST + FRESH_CONNECTION)
    assert len(sockets) == 4
    assert sum(hc.socket_busy(s) for s in sockets) == 2


def test_model_names_come_from_load_models() -> None:
    assert hc.model_names("msde=msde.mar") == ("msde",)
    assert hc.model_names("a=x.mar, other.mar") == ("a", "other")
    with pytest.raises(ValueError):
        hc.model_names("ALL")
    with pytest.raises(ValueError):
        hc.model_names("")


def test_wildcard_listen_addresses_are_probed_on_loopback() -> None:
    assert hc.parse_address("http://0.0.0.0:8080") == hc.Endpoint("127.0.0.1", 8080)
    assert hc.parse_address("http://127.0.0.1:18081") == hc.Endpoint("127.0.0.1", 18081)
    with pytest.raises(ValueError):
        hc.parse_address("https://0.0.0.0:8443")


def test_probe_image_is_a_valid_png() -> None:
    image = Image.open(io.BytesIO(hc.probe_png()))
    image.load()
    assert image.format == "PNG" and image.size == (64, 64)


def test_token_keys_are_used_only_when_token_auth_is_on(tmp_path: Path) -> None:
    keys = {"management": {"key": "m-key"}, "inference": {"key": "i-key"}, "API": {"key": "a"}}
    (tmp_path / "key_file.json").write_text(json.dumps(keys))
    (tmp_path / "config.properties").write_text(
        "inference_address=http://0.0.0.0:9080\nmanagement_address=http://127.0.0.1:9081\n"
        "load_models=msde=msde.mar\n"
    )
    serving = hc.load_serving(tmp_path)
    assert serving.tokens == {"inference": "i-key", "management": "m-key"}
    assert serving.inference.port == 9080 and serving.models == ("msde",)
    with (tmp_path / "config.properties").open("a") as f:
        f.write("disable_token_authorization=true\n")
    assert hc.load_serving(tmp_path).tokens == {}


def test_draining_server_is_never_ready(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("load_models=msde=msde.mar\n")
    (tmp_path / "draining").touch()
    # no server is contacted: the marker alone decides
    assert hc.check_ready(hc.load_serving(tmp_path), timeout=0.1) is False


def test_missing_setup_reports_not_ready(tmp_path: Path) -> None:
    assert hc.main(["ready", "--work-dir", str(tmp_path / "absent"), "--quiet"]) == 1
