"""The generated bad-input corpus: every payload is built here from code, nothing is downloaded.

Two kinds of case, shared by the end-to-end suite (``tests/e2e/test_bad_inputs.py``, sent to
real TorchServe) and the in-process fuzz tests (``tests/handler/test_fuzz.py``, seeds):

* ``RejectCase``: a request the service must refuse with a 4xx and our JSON error body
  (``code`` is the stable error code) -- or, where TorchServe's frontend answers before
  the handler sees the request, with TorchServe's status (``code`` is None then).
* ``AcceptCase``: odd but legitimate images (16-bit, CMYK, palette with transparency,
  animated GIF, every EXIF orientation, huge or broken EXIF) that must be answered 200 with
  the size the client will see (EXIF rotation applied).

``torchserve_inputs`` turns an HTTP request into the dict TorchServe hands the handler, so
the in-process tests exercise the same corpus without a server.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

# A distinctive marker the log test searches for in TorchServe's logs.
LOG_MARKER = b"MSDE-PAYLOAD-MARKER-7f3a9c"
# Over deploy/config.properties max_request_size (20 MiB).
OVER_REQUEST_LIMIT = 20 * 1024 * 1024 + 4096


@dataclass(frozen=True)
class Request:
    """One HTTP POST to /predictions/<model>: raw body, multipart parts, query parameters."""

    body: bytes = b""
    content_type: str | None = None
    files: tuple[tuple[str, str | None, bytes, str | None], ...] = ()  # field, filename, data, mime
    params: tuple[tuple[str, str], ...] = ()

    def requests_kwargs(self) -> dict[str, Any]:
        """Arguments for ``requests.post`` that send exactly this request."""
        kwargs: dict[str, Any] = {"params": list(self.params)}
        if self.files:
            kwargs["files"] = [(name, (fn, data, mime)) for name, fn, data, mime in self.files]
        else:
            kwargs["data"] = self.body
            if self.content_type:
                kwargs["headers"] = {"Content-Type": self.content_type}
        return kwargs


@dataclass(frozen=True)
class RejectCase:
    name: str
    request: Request
    status: int
    code: str | None  # our error code; None when TorchServe's frontend answers by itself


@dataclass(frozen=True)
class AcceptCase:
    name: str
    request: Request
    size: tuple[int, int]  # (width, height) the response must report
    tags: frozenset[str] = field(default_factory=frozenset)


# -- image makers -----------------------------------------------------------------------
def picture(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photo, decodes exactly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     (xx + yy) * 255 // max(h + w - 2, 1)], axis=-1)
    noise = rng.integers(-12, 12, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(h: int = 96, w: int = 128, **kwargs: Any) -> bytes:
    return save(Image.fromarray(picture(h, w)), "JPEG", quality=90, **kwargs)


def png(h: int = 96, w: int = 128) -> bytes:
    return save(Image.fromarray(picture(h, w)), "PNG")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def png_bomb(w: int, h: int) -> bytes:
    """A PNG declaring w x h RGB pixels whose data is a few hundred bytes of zeros."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 65536, 9)) + png_chunk(b"IEND", b""))


def flat_png(w: int, h: int) -> bytes:
    """A valid, fully decodable black w x h RGB PNG: a few hundred KB that decode to
    w * h * 3 bytes (the heaviest body per byte the pixel limits admit)."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * w)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(h)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def jpeg_declaring(w: int, h: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim w x h pixels."""
    data = bytearray(jpeg(16, 16))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, h, w)
    return bytes(data)


def gif_declaring(w: int, h: int) -> bytes:
    data = bytearray(save(Image.new("P", (16, 16)), "GIF"))
    struct.pack_into("<HH", data, 6, w, h)  # logical screen
    image_descriptor = data.find(b"\x2c")
    struct.pack_into("<HH", data, image_descriptor + 5, w, h)
    return bytes(data)


def png_with_bad_crc(chunk: bytes) -> bytes:
    data = bytearray(png())
    at = data.find(chunk)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # first byte of that chunk's CRC
    return bytes(data)


def png_with_flipped_idat() -> bytes:
    data = bytearray(png())
    at = data.find(b"IDAT")
    data[at + 12] ^= 0xFF
    return bytes(data)


def png_with_ztxt_bomb() -> bytes:
    """A valid PNG carrying a compressed text chunk that inflates to 64 MiB."""
    data = png()
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    at = data.find(b"IDAT") - 4
    return data[:at] + bomb + data[at:]


def with_exif(data: bytes, exif: bytes) -> bytes:
    """A JPEG with an APP1 segment holding ``exif`` inserted right after SOI."""
    payload = b"Exif\x00\x00" + exif
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def oriented_jpeg(orientation: int, h: int = 48, w: int = 80) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(h, w, exif=exif.tobytes())


def huge_exif_jpeg() -> bytes:
    """EXIF at the segment maximum (~64 KiB): a long maker note plus orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "x" * 60_000  # ImageDescription
    return jpeg(48, 80, exif=exif.tobytes())


def many_app_segments_jpeg(count: int = 60) -> bytes:
    """~3.8 MiB of APP segments (comments, vendor blocks) in front of a tiny picture."""
    data = jpeg(48, 80)
    block = b"\xff\xeb" + struct.pack(">H", 65533) + b"\x00" * 65531
    return data[:2] + block * count + data[2:]


def sixteen_bit_png() -> bytes:
    arr = (picture(64, 64)[..., 0].astype(np.uint16) * 257)
    return save(Image.fromarray(arr), "PNG")


def cmyk_jpeg() -> bytes:
    return save(Image.fromarray(picture(64, 96)).convert("CMYK"), "JPEG")


def palette_png_with_transparency() -> bytes:
    img = Image.fromarray(picture(64, 64)).convert("P", palette=Image.Palette.ADAPTIVE)
    return save(img, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.fromarray(picture(64, 80, seed=s)).convert("P") for s in range(3)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def as_json(obj: Any) -> Request:
    return Request(json.dumps(obj).encode(), "application/json")


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photo.jpg", jpeg(16, 16))
    return buf.getvalue()


def named_jpg(data: bytes) -> Request:
    return Request(files=(("data", "photo.jpg", data, "image/jpeg"),))


# -- the corpus -------------------------------------------------------------------------
def reject_cases() -> list[RejectCase]:
    """Requests to refuse; built fresh on each call (cheap: a few MB in all but one case)."""
    good = jpeg()
    text = b"Hello, this is a plain text file, not a photo.\n" * 4
    html = b"<!DOCTYPE html><html><body><img src=x></body></html>"
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"
    cases = [
        RejectCase("empty_body", Request(), 400, "empty_body"),
        RejectCase("empty_body_typed_jpeg", Request(b"", "image/jpeg"), 400, "empty_body"),
        RejectCase("multipart_zero_length_data",
                   Request(files=(("data", "photo.jpg", b"", "image/jpeg"),)), 400, "empty_body"),
        RejectCase("multipart_zero_length_image",
                   Request(files=(("image", "photo.jpg", b"", "image/jpeg"),)), 400, "empty_body"),
        RejectCase("multipart_unknown_field",
                   Request(files=(("file", "photo.jpg", good, "image/jpeg"),)), 400, "empty_body"),
        RejectCase("multipart_text_field_not_base64",
                   Request(files=(("data", None, b"@@@ not base64 @@@", None),)), 400,
                   "undecodable_image"),
        RejectCase("truncated_jpeg_half", Request(good[: len(good) // 2]), 400,
                   "undecodable_image"),
        RejectCase("jpeg_header_only", Request(good[:200]), 400, "undecodable_image"),
        RejectCase("truncated_png", Request(png()[:300]), 400, "undecodable_image"),
        RejectCase("png_idat_corrupted", Request(png_with_flipped_idat()), 400,
                   "undecodable_image"),
        RejectCase("png_ihdr_bad_crc", Request(png_with_bad_crc(b"IHDR")), 400,
                   "undecodable_image"),
        RejectCase("png_idat_bad_crc", Request(png_with_bad_crc(b"IDAT")), 400,
                   "undecodable_image"),
        RejectCase("jpeg_magic_then_garbage",
                   Request(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8), 400, "undecodable_image"),
        RejectCase("png_signature_then_garbage",
                   Request(b"\x89PNG\r\n\x1a\n" + b"\x13\x37" * 300), 400, "undecodable_image"),
        RejectCase("gif_header_then_garbage", Request(b"GIF89a\x10\x00\x10\x00" + b"\xee" * 300),
                   400, "undecodable_image"),
        RejectCase("webp_riff_then_garbage",
                   Request(b"RIFF\x00\x10\x00\x00WEBPVP8 " + b"\x01" * 300), 400,
                   "undecodable_image"),
        RejectCase("text_named_jpg", named_jpg(text), 400, "undecodable_image"),
        RejectCase("html_named_jpg", named_jpg(html), 415, "unsupported_type"),
        RejectCase("pdf_named_jpg", named_jpg(pdf), 415, "unsupported_type"),
        RejectCase("zip_named_jpg", named_jpg(zip_bytes()), 415, "unsupported_type"),
        RejectCase("gzip_body", Request(gzip.compress(good)), 415,
                   "unsupported_type"),
        RejectCase("svg_body", Request(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'), 415,
                   "unsupported_type"),
        RejectCase("text_plain_body", Request(text, "text/plain"), 415, "unsupported_type"),
        RejectCase("ppm_not_accepted",
                   Request(save(Image.fromarray(picture(32, 32)), "PPM")), 415,
                   "unsupported_type"),
        RejectCase("ico_not_accepted", Request(save(Image.fromarray(picture(32, 32)), "ICO")),
                   415, "unsupported_type"),
        RejectCase("eps_not_accepted", Request(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
                                               b"showpage\n"), 415, "unsupported_type"),
        RejectCase("json_image_invalid_base64_chars", as_json({"image": "@@@!!!***"}), 400,
                   "bad_base64"),
        RejectCase("json_image_base64_of_text", as_json({"image": b64(text)}), 400,
                   "undecodable_image"),
        RejectCase("json_image_base64_non_ascii", as_json({"image": "ÿØÿà" + b64(good)}), 400,
                   "bad_base64"),
        RejectCase("json_wrong_key", as_json({"picture": b64(good)}), 400, "bad_request"),
        RejectCase("json_empty_object", as_json({}), 400, "bad_request"),
        RejectCase("json_image_is_number", as_json({"image": 42}), 400, "bad_request"),
        RejectCase("json_image_is_list", as_json({"image": [1, 2, 3]}), 400, "bad_request"),
        RejectCase("json_image_is_null", as_json({"image": None}), 400, "bad_request"),
        RejectCase("json_image_empty_string", as_json({"image": ""}), 400, "bad_request"),
        RejectCase("json_detect_not_boolean", as_json({"image": b64(good), "detect": "maybe"}),
                   400, "bad_request"),
        RejectCase("json_top_level_list", as_json([b64(good)]), 400, "bad_request"),
        RejectCase("json_top_level_string", as_json("just a string"), 415, "unsupported_type"),
        RejectCase("json_top_level_huge_number", as_json(10**15), 400, "bad_request"),
        RejectCase("json_top_level_float", as_json(3.5), 400, "bad_request"),
        RejectCase("json_top_level_true", as_json(True), 400, "bad_request"),
        RejectCase("json_malformed_typed", Request(b'{"image": "abc', "application/json"), 400,
                   "bad_json"),
        RejectCase("json_malformed_untyped", Request(b'{"image": "abc'), 400, "bad_json"),
        RejectCase("json_deeply_nested", Request(b"[" * 200_000 + b"]" * 200_000,
                                                 "application/json"), 400, "bad_json"),
        RejectCase("json_not_utf8", Request(b'{"image": "\xff\xfe"}', "application/json"), 400,
                   "bad_json"),
        RejectCase("kserve_empty_instances", as_json({"instances": []}), 400, "bad_request"),
        RejectCase("kserve_instances_not_a_list", as_json({"instances": {"data": b64(good)}}),
                   400, "bad_request"),
        RejectCase("kserve_instance_without_data", as_json({"instances": [{"bytes": 1}]}), 400,
                   "bad_request"),
        RejectCase("kserve_instance_bad_base64", as_json({"instances": [{"data": "%%%"}]}), 400,
                   "bad_base64"),
        RejectCase("kserve_instance_undecodable",
                   as_json({"instances": [{"data": b64(good)}, {"data": b64(b"\xff\xd8junk")}]}),
                   400, "undecodable_image"),
        RejectCase("kserve_too_many_instances",
                   as_json({"instances": [{"data": b64(good)}] * 17}), 413, "too_many_images"),
        RejectCase("kserve_over_the_pixel_budget",  # issue #13: 16 x 39.6 MP, refused unread
                   as_json({"instances": [{"data": b64(png_bomb(6000, 6600))}] * 16}), 413,
                   "too_many_pixels"),
        RejectCase("multipart_detect_not_boolean",
                   Request(files=(("data", "photo.jpg", good, "image/jpeg"),
                                  ("detect", None, b"perhaps", None))), 400, "bad_request"),
        RejectCase("image_1x1", Request(save(Image.new("RGB", (1, 1)), "PNG")), 400,
                   "image_too_small"),
        RejectCase("image_4x300", Request(save(Image.new("RGB", (4, 300)), "PNG")), 400,
                   "image_too_small"),
        RejectCase("png_bomb_20000x20000", Request(png_bomb(20000, 20000)), 413,
                   "image_too_large"),
        RejectCase("png_bomb_7000x7000_pixels", Request(png_bomb(7000, 7000)), 413,
                   "image_too_large"),
        RejectCase("png_bomb_13000x8", Request(png_bomb(13000, 8)), 413, "image_too_large"),
        RejectCase("jpeg_declaring_20000x20000", Request(jpeg_declaring(20000, 20000)), 413,
                   "image_too_large"),
        RejectCase("gif_declaring_65535x65535", Request(gif_declaring(65535, 65535)), 413,
                   "image_too_large"),
        RejectCase("png_ztxt_decompression_bomb", Request(png_with_ztxt_bomb()), 400,
                   "undecodable_image"),
        RejectCase("body_over_request_limit",
                   Request(good + b"\x00" * (OVER_REQUEST_LIMIT - len(good))), 413, None),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def accept_cases() -> list[AcceptCase]:
    """Odd but legitimate images: answered 200 (the animated GIF: its first frame)."""
    cases = [
        AcceptCase("png_16_bit", Request(sixteen_bit_png()), (64, 64)),
        AcceptCase("jpeg_cmyk", Request(cmyk_jpeg()), (96, 64)),
        AcceptCase("png_palette_transparency", Request(palette_png_with_transparency()),
                   (64, 64)),
        AcceptCase("gif_animated_first_frame", Request(animated_gif()), (80, 64)),
        AcceptCase("jpeg_huge_exif_block", Request(huge_exif_jpeg()), (48, 80)),
        AcceptCase("jpeg_many_app_segments", Request(many_app_segments_jpeg()), (80, 48)),
        AcceptCase("jpeg_broken_exif",
                   Request(with_exif(jpeg(48, 80), b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00"
                                     * 12)), (80, 48)),
        AcceptCase("jpeg_exif_orientation_out_of_range", Request(oriented_jpeg(9)), (80, 48)),
        AcceptCase("png_grayscale_alpha",
                   Request(save(Image.fromarray(picture(40, 50)).convert("LA"), "PNG")), (50, 40)),
        AcceptCase("multipart_base64_text_field",
                   Request(files=(("image", None, b64(jpeg()).encode(), None),)), (128, 96)),
        AcceptCase("image_8x8_minimum", Request(save(Image.new("RGB", (8, 8), "gray"), "PNG")),
                   (8, 8)),
        AcceptCase("image_black_no_detect",
                   as_json({"image": b64(save(Image.new("RGB", (64, 64)), "PNG")),
                            "detect": False}), (64, 64), frozenset({"one_face"})),
        AcceptCase("image_white_no_detect",
                   as_json({"image": b64(save(Image.new("RGB", (64, 64), "white"), "PNG")),
                            "detect": False}), (64, 64), frozenset({"one_face"})),
    ]
    for orientation in range(2, 9):
        rotated = orientation in (5, 6, 7, 8)
        cases.append(AcceptCase(f"jpeg_exif_orientation_{orientation}",
                                Request(oriented_jpeg(orientation)),
                                (48, 80) if rotated else (80, 48)))
    return cases


def torchserve_inputs(request: Request) -> dict[str, Any]:
    """What TorchServe 0.12 hands ``handle()`` for this request (one entry of its batch).

    The frontend passes a raw body as ``body``, multipart parts and query parameters under
    their names; the worker JSON-decodes ``application/json`` values (forwarding the bytes when
    that fails) and UTF-8-decodes ``text/*`` ones.
    """
    def value(data: bytes, mime: str | None) -> Any:
        if mime == "application/json":
            try:
                return json.loads(data.decode("utf-8"))
            except (ValueError, RecursionError):
                return data
        if mime is not None and mime.startswith("text"):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data
        return data

    inputs: dict[str, Any] = {name: val.encode() for name, val in request.params}
    if request.files:
        for name, _, data, mime in request.files:
            inputs[name] = value(data, mime)
    else:
        inputs["body"] = value(request.body, request.content_type)
    return inputs


# -- mutation (fuzzing) -----------------------------------------------------------------
def seed_images() -> list[bytes]:
    """Encoded images to mutate: every accepted format, odd modes, and the corpus' images."""
    pic = Image.fromarray(picture(40, 56))
    seeds = [save(pic, fmt) for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")]
    seeds += [save(pic, "JPEG", progressive=True), save(pic.convert("L"), "PNG"),
              save(pic.convert("RGBA"), "WEBP", lossless=True), sixteen_bit_png(),
              cmyk_jpeg(), palette_png_with_transparency(), animated_gif(), huge_exif_jpeg(),
              oriented_jpeg(6), png_bomb(20000, 20000), jpeg_declaring(20000, 20000)]
    return seeds


_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                b"\xff\xd8", b"\xff\xd9", b"IDAT", b"IEND", b"\x2c", b"\x3b")


def mutate(data: bytes, rng: np.random.Generator, rounds: int = 1) -> bytes:
    """Byte-level mutations a fuzzer uses: flips, overwrites, truncation, insert, duplicate."""
    buf = bytearray(data)
    for _ in range(rounds):
        op = int(rng.integers(0, 7))
        at = int(rng.integers(0, max(len(buf), 1)))
        if op == 0 and buf:  # flip one bit
            buf[at] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and buf:  # random bytes overwrite
            n = int(rng.integers(1, 16))
            buf[at : at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif op == 2:  # truncate
            del buf[at:]
        elif op == 3:  # insert an interesting value
            buf[at:at] = _INTERESTING[int(rng.integers(0, len(_INTERESTING)))]
        elif op == 4 and buf:  # duplicate a block
            n = int(rng.integers(1, 256))
            buf[at:at] = buf[at : at + n]
        elif op == 5 and len(buf) > 8:  # overwrite a 16/32-bit field with an extreme
            width = 2 if rng.integers(0, 2) else 4
            value = int(rng.choice([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])) % (
                1 << (8 * width))
            buf[at : at + width] = value.to_bytes(width, "big")
        else:  # delete a block
            del buf[at : at + int(rng.integers(1, 64))]
    return bytes(buf)


def all_finite(obj: Any) -> bool:
    """No NaN or infinity anywhere in a decoded JSON answer."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(all_finite(v) for v in obj)
    return True
