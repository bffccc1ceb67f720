from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from handler.decode import (
    DecodeLimits,
    InputError,
    decode_image,
    decode_opened,
    open_image,
    parse_request,
    reduction_for,
)
from testkit.corpus import oriented_jpeg, png_bomb
from testkit.imaging import encode


def _img(h: int = 40, w: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    arr = decode_image(encode(_img(), fmt))
    assert arr.shape == (40, 60, 3) and arr.dtype == np.uint8


def test_grayscale_becomes_rgb() -> None:
    gray = np.full((30, 20), 128, np.uint8)
    arr = decode_image(encode(gray, "PNG"))
    assert arr.shape == (30, 20, 3) and (arr == 128).all()


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent black
    arr = decode_image(encode(rgba, "PNG"))
    assert (arr == 255).all()


def test_sixteen_bit_png_is_scaled_to_eight_bit() -> None:
    img = Image.fromarray(np.full((20, 20), 65535, np.uint16))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert (decode_image(buf.getvalue()) == 255).all()


def test_cmyk_jpeg_decodes() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(buf, "JPEG")
    arr = decode_image(buf.getvalue())
    assert arr.shape == (24, 24, 3)
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 60  # red


def test_palette_png_with_transparency() -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([255, 0, 0] * 256)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    assert (decode_image(buf.getvalue()) == 255).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    arr = _img(30, 50)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(arr, "JPEG", exif=exif.tobytes()))
    rotated = orientation in (5, 6, 7, 8)
    assert out.shape[:2] == ((50, 30) if rotated else (30, 50))


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


def test_truncated_jpeg_is_rejected() -> None:
    data = encode(_img(200, 200), "JPEG")
    with pytest.raises(InputError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.code == "undecodable_image" and e.value.status == 400


def test_corrupt_png_crc_is_rejected() -> None:
    data = bytearray(encode(_img(), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(InputError) as e:
        decode_image(bytes(data))
    assert e.value.code == "undecodable_image"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 1000
    with pytest.raises(InputError) as e:
        decode_image(bomb)
    assert e.value.code == "image_too_large" and e.value.status == 413


def test_too_small_image_is_rejected() -> None:
    with pytest.raises(InputError) as e:
        decode_image(encode(np.zeros((1, 1, 3), np.uint8), "PNG"))
    assert e.value.code == "image_too_small"


@pytest.mark.parametrize(
    "payload",
    [b"%PDF-1.7 ...", b"PK\x03\x04zipdata", b"<!DOCTYPE html><html>", b"hello world, plain text"],
)
def test_non_images_are_rejected_with_a_clear_code(payload: bytes) -> None:
    with pytest.raises(InputError) as e:
        decode_image(payload)
    assert e.value.code in {"unsupported_type", "undecodable_image"}
    assert e.value.status in (400, 415)


def test_payload_over_the_size_limit_is_413() -> None:
    with pytest.raises(InputError) as e:
        decode_image(b"\xff" * 2048, DecodeLimits(max_bytes=1024))
    assert e.value.status == 413


def test_raw_body_request() -> None:
    data = encode(_img())
    req = parse_request({"body": data})
    assert req.envelope == "single" and req.images[0].data == data and req.images[0].detect


def test_json_base64_request_with_detect_false() -> None:
    data = encode(_img())
    req = parse_request({"body": {"image": base64.b64encode(data).decode(), "detect": False}})
    assert req.images[0].data == data and not req.images[0].detect


def test_json_sent_as_bytes_is_parsed() -> None:
    data = encode(_img())
    body = json.dumps({"image": base64.b64encode(data).decode()}).encode()
    assert parse_request({"body": body}).images[0].data == data


def test_kserve_v1_instances() -> None:
    a, b = encode(_img()), encode(_img(50, 50))
    req = parse_request(
        {"body": {"instances": [{"data": base64.b64encode(x).decode()} for x in (a, b)]}}
    )
    assert req.envelope == "kserve_v1" and [i.data for i in req.images] == [a, b]


@pytest.mark.parametrize("field", ["data", "image"])
def test_multipart_fields(field: str) -> None:
    data = encode(_img())
    assert parse_request({field: data}).images[0].data == data


@pytest.mark.parametrize(
    ("inputs", "code"),
    [
        ({"body": b""}, "empty_body"),
        ({}, "empty_body"),
        ({"data": b""}, "empty_body"),
        ({"body": {"instances": []}}, "bad_request"),
        ({"body": {"instances": [{"nodata": 1}]}}, "bad_request"),
        ({"body": {"img": "x"}}, "bad_request"),
        ({"body": {"image": 42}}, "bad_request"),
        ({"body": {"image": "@@not base64!!"}}, "bad_base64"),
        ({"body": [1, 2, 3]}, "bad_request"),
        ({"body": b"{not json"}, "bad_json"),
        ({"body": "just text"}, "unsupported_type"),
        ({"body": {"image": "aGVsbG8=", "detect": "maybe"}}, "bad_request"),
    ],
)
def test_malformed_requests_have_stable_codes(inputs: dict, code: str) -> None:
    with pytest.raises(InputError) as e:
        parse_request(inputs)
    assert e.value.code == code
    assert e.value.body()["error"]["message"]


# -- working resolution and pixel budgets ----------------------------------------------
@pytest.mark.parametrize(("size", "side", "k"), [
    ((640, 480), 1024, 1), ((2048, 1000), 1024, 2), ((4000, 3000), 1024, 2),
    ((6000, 6600), 1024, 4), ((12000, 3000), 1024, 8), ((4000, 3000), None, 1),
    ((4096, 100), 512, 8),
])
def test_reduction_keeps_the_long_side_at_the_working_side(
    size: tuple[int, int], side: int | None, k: int
) -> None:
    assert reduction_for(size, side) == k
    if k > 1:
        assert max(size) // k >= side


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_big_image_decodes_at_working_resolution_and_reports_its_full_size(fmt: str) -> None:
    raw = encode(_img(1100, 2400), fmt)
    opened = open_image(raw, working_side=1024)
    # a JPEG is DCT-scaled while decoding: its decoded pixels are counted at that scale
    assert opened.decoded_pixels == (1200 * 550 if fmt == "JPEG" else 2400 * 1100)
    decoded = decode_opened(opened)
    assert decoded.array.shape == (550, 1200, 3)
    assert (decoded.width, decoded.height) == (2400, 1100)
    assert decoded.scale == (2.0, 2.0)
    assert decode_image(raw).shape == (1100, 2400, 3)  # training: always full resolution


def test_reduced_decode_keeps_the_picture() -> None:
    gradient = np.linspace(0, 255, 2400, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(gradient, (1200, 2400, 3)).astype(np.uint8)
    reduced = decode_opened(open_image(encode(image, "JPEG", quality=95), working_side=1024))
    expected = image[::2, ::2].astype(np.float32)
    assert np.abs(reduced.array.astype(np.float32) - expected).mean() < 3.0


def test_exif_rotation_swaps_the_reported_size_of_a_reduced_image() -> None:
    from PIL import Image as PILImage

    exif = PILImage.Exif()
    exif[0x0112] = 6
    raw = encode(_img(1100, 2400), "JPEG", exif=exif.tobytes())
    decoded = decode_opened(open_image(raw, working_side=1024))
    assert decoded.array.shape == (1200, 550, 3)
    assert (decoded.width, decoded.height) == (1100, 2400)
    small = decode_opened(open_image(oriented_jpeg(6), working_side=1024))
    assert (small.width, small.height) == (48, 80) and small.scale == (1.0, 1.0)


def test_flat_bomb_within_the_image_limit_is_counted_before_decoding() -> None:
    opened = open_image(png_bomb(6000, 6600), DecodeLimits(), working_side=1024)
    assert opened.decoded_pixels == 6000 * 6600  # PNG: decoded at full size, then reduced
