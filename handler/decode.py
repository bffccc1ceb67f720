"""Request bytes -> RGB image, safely.

Every way a request can be wrong ends in ``InputError`` with a stable ``code`` (used in the
JSON error body and as the bounded ``reason`` label of the rejection metric) and the HTTP
status the client gets. Nothing here logs or echoes payload bytes.

Hardening (see docs/security.md): PIL only ever tries the accepted formats' parsers (no
Ghostscript-backed EPS, no exotic plugins), the declared size is checked before any pixel
is decoded, PNG chunk checksums are verified, JSON nesting bombs and non-object JSON bodies
are refused, and anything else a decoder raises on hostile bytes becomes a 400, so that a
payload can fail its own request but never the batch it was batched with.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

LOG = logging.getLogger(__name__)

# Stable error codes; also the values of the ``reason`` metric label.
ERROR_CODES: tuple[str, ...] = (
    "empty_body",
    "bad_json",
    "bad_base64",
    "bad_request",
    "unsupported_type",
    "undecodable_image",
    "image_too_large",
    "image_too_small",
    "payload_too_large",
    "too_many_images",
)

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "MPO", "TIFF"})
MULTIPART_FIELDS: tuple[str, ...] = ("data", "image")

# Magic numbers of things people send that are not images, for a clearer message.
_NOT_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"<!DOCTYPE", "an HTML document"),
    (b"<html", "an HTML document"),
    (b"<?xml", "an XML document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<svg", "an SVG drawing"),
)
# Image formats PIL could read but the service does not accept: recognised by their magic
# numbers (PIL is never asked to parse them) so the client gets 415 and the format's name.
_UNACCEPTED_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "PostScript/EPS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"icns", "ICNS"),
    (b"SIMPLE  =", "FITS"),
    (b"#define", "XBM"),
    (b"/* XPM */", "XPM"),
    (b"\x01\xda", "SGI"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
) + tuple((b"P" + str(n).encode(), "PPM/PGM/PBM") for n in range(1, 8))
_ISO_MEDIA_BRANDS = (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=_\-\s]+")


class InputError(Exception):
    """A request the service refuses; ``status`` is the HTTP code, ``code`` is stable."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 12_000
    min_side: int = 8
    max_images: int = 16  # instances of one KServe v1 request


@dataclass(frozen=True)
class ImageRequest:
    """One image to analyse, as the client sent it (bytes still encoded)."""

    data: bytes
    detect: bool = True


@dataclass(frozen=True)
class ParsedRequest:
    """What one HTTP request asked for: one image, or a KServe v1 list of instances."""

    images: tuple[ImageRequest, ...]
    envelope: Literal["single", "kserve_v1"] = "single"


def _parse_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no"}:
        return False
    raise InputError("bad_request", f"'{field}' must be true or false")


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InputError("bad_request", f"'{field}' must be a non-empty base64 string")
    text = value.strip()
    if text.startswith("data:") and "," in text:  # data URL
        text = text.split(",", 1)[1]
    text = "".join(text.split())  # line-wrapped base64 is still base64
    text = text.replace("-", "+").replace("_", "/")  # accept the URL-safe alphabet too
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("bad_base64", f"'{field}' is not valid base64") from None
    if not raw:
        raise InputError("empty_body", f"'{field}' decodes to zero bytes")
    return raw


_JSON_SHAPE = 'JSON body must be an object: {"image": "<base64>"} or {"instances": [...]}'


def _from_json(obj: Any, limits: DecodeLimits) -> ParsedRequest:
    if not isinstance(obj, dict):
        raise InputError("bad_request", _JSON_SHAPE)
    if "instances" in obj:
        instances = obj["instances"]
        if not isinstance(instances, list) or not instances:
            raise InputError("bad_request", "'instances' must be a non-empty list")
        if len(instances) > limits.max_images:
            raise InputError(
                "too_many_images",
                f"{len(instances)} instances in one request; the limit is {limits.max_images}",
                status=413,
            )
        images = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InputError("bad_request", f"instances[{i}] must be an object")
            key = next((k for k in ("data", "image", "b64") if k in inst), None)
            if key is None:
                raise InputError("bad_request", f"instances[{i}] needs a 'data' field")
            value = inst[key]
            if isinstance(value, dict) and "b64" in value:  # {"data": {"b64": "..."}}
                value = value["b64"]
            images.append(
                ImageRequest(
                    _b64(value, f"instances[{i}].{key}"),
                    _parse_bool(inst.get("detect", True), f"instances[{i}].detect"),
                )
            )
        return ParsedRequest(tuple(images), envelope="kserve_v1")
    key = next((k for k in ("image", "data") if k in obj), None)
    if key is None:
        raise InputError(
            "bad_request", f"JSON body needs an 'image' field (got keys: {sorted(obj)[:10]})"
        )
    return ParsedRequest(
        (ImageRequest(_b64(obj[key], key), _parse_bool(obj.get("detect", True), "detect")),)
    )


def parse_request(inputs: dict[str, Any], limits: DecodeLimits = DecodeLimits()) -> ParsedRequest:
    """One TorchServe request (its dict of input name -> value) -> what to analyse.

    TorchServe hands a raw body as ``body`` (already JSON-decoded when the client said
    ``application/json``: then it may be any JSON value, not only an object), multipart
    fields under their names (bytes, even for plain text fields).
    """
    detect_field = inputs.get("detect")
    for field in MULTIPART_FIELDS:
        if field in inputs:
            value = inputs[field]
            if isinstance(value, (bytes, bytearray)) and _is_base64_text(bytes(value)):
                value = bytes(value).decode("ascii")  # a text form field holding base64
            if isinstance(value, str):
                value = _b64(value, field)
            if not isinstance(value, (bytes, bytearray)) or not value:
                raise InputError("empty_body", f"form field '{field}' is empty")
            _check_size(bytes(value), limits)
            detect = True if detect_field is None else _parse_bool(detect_field, "detect")
            return ParsedRequest((ImageRequest(bytes(value), detect),))
    if "body" not in inputs:
        raise InputError(
            "empty_body", "no image: send it as the body, or as the form field 'data' or 'image'"
        )
    body = inputs["body"]
    if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
        raise InputError("empty_body", "the request body is empty")
    if isinstance(body, (dict, list)):
        return _from_json(body, limits)
    if isinstance(body, str):
        stripped = body.lstrip()
        if stripped.startswith(("{", "[")):
            return _from_json(_json_loads(stripped), limits)
        raise InputError(
            "unsupported_type",
            "the body is text (or a JSON string): send image bytes, multipart, or a JSON "
            'object {"image": "<base64>"}',
            status=415,
        )
    if not isinstance(body, (bytes, bytearray)):  # a JSON number, true/false
        raise InputError("bad_request", _JSON_SHAPE)
    raw = bytes(body)
    _check_size(raw, limits)
    head = raw[:64].lstrip()
    if head[:1] in (b"{", b"["):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("bad_json", "the body looks like JSON but is not UTF-8") from None
        return _from_json(_json_loads(text), limits)
    detect = True if detect_field is None else _parse_bool(detect_field, "detect")
    return ParsedRequest((ImageRequest(raw, detect),))


def _json_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise InputError("bad_json", "the body looks like JSON but does not parse") from None
    except RecursionError:  # "[[[[..." nesting bombs exhaust the parser's stack
        raise InputError("bad_json", "the JSON body is nested too deeply") from None


def _is_base64_text(value: bytes) -> bool:
    return value.startswith(b"data:") or _BASE64_TEXT.fullmatch(value) is not None


def _check_size(raw: bytes, limits: DecodeLimits) -> None:
    if len(raw) > limits.max_bytes:
        raise InputError(
            "payload_too_large",
            f"image is {len(raw)} bytes; the limit is {limits.max_bytes}",
            status=413,
        )


def _describe_non_image(raw: bytes) -> str | None:
    """What the body is, when it is recognisably not an accepted image (for a 415)."""
    head = raw[:16].lstrip().lower()
    for sig, what in _NOT_IMAGE_SIGNATURES:
        if head.startswith(sig.lower()):
            return what
    for sig, fmt in _UNACCEPTED_IMAGE_SIGNATURES:
        if raw.startswith(sig):
            return f"a {fmt} image"
    if raw[4:8] == b"ftyp" and raw[8:12] in _ISO_MEDIA_BRANDS:
        return "a HEIF/AVIF image"
    return None


def _looks_like_text(raw: bytes) -> bool:
    """Printable UTF-8 at the start: a text file, never an image (all have binary headers)."""
    head = raw[:1024]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut by the 1 KiB window
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white, 16-bit scaled to 8-bit."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(raw: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Encoded image -> RGB uint8 array (H, W, 3), EXIF orientation applied.

    Animated images (GIF, WebP, APNG): the first frame is analysed. EXIF that cannot be
    parsed is ignored (cameras write broken EXIF; the pixels are still good).
    """
    if not raw:
        raise InputError("empty_body", "the image is empty")
    _check_size(raw, limits)
    what = _describe_non_image(raw)
    if what is not None:
        raise InputError("unsupported_type", f"the body is {what}, not an accepted image", 415)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = _open(raw, limits)
            img.seek(0)
            img.load()
            img = _exif_transposed(img)
            rgb = _to_rgb(img)
    except InputError:
        raise
    except MemoryError:
        raise
    except UnidentifiedImageError:
        if _looks_like_text(raw):
            raise InputError("undecodable_image", "the body is text, not an image") from None
        raise InputError("undecodable_image", "the body is not a readable image") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputError(
            "undecodable_image", f"the image is damaged or truncated ({type(exc).__name__})"
        ) from None
    except Exception as exc:  # a decoder bug on hostile bytes: this request fails, not the batch
        LOG.warning("image decoder raised %s; answered 400", type(exc).__name__)
        raise InputError("undecodable_image", "the image could not be decoded") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError("undecodable_image", "the image could not be converted to RGB")
    return np.ascontiguousarray(arr)


def _open(raw: bytes, limits: DecodeLimits) -> Image.Image:
    """Identify the image with the accepted formats' parsers only and check what it declares.

    Nothing is decoded here but headers; PNG chunk checksums are verified (PIL's decoder
    does not check IDAT's).
    """
    img = Image.open(io.BytesIO(raw), formats=_PARSERS)
    w, h = img.size
    if w * h > limits.max_pixels or max(w, h) > limits.max_side:
        raise InputError(
            "image_too_large",
            f"image is {w}x{h} pixels; limits are {limits.max_pixels} pixels and "
            f"{limits.max_side} per side",
            status=413,
        )
    if min(w, h) < limits.min_side:
        raise InputError(
            "image_too_small",
            f"image is {w}x{h} pixels; at least {limits.min_side} per side is needed",
        )
    if img.format == "PNG":
        Image.open(io.BytesIO(raw), formats=["PNG"]).verify()
    return img


def _exif_transposed(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF: keep the pixels as stored
        LOG.debug("EXIF ignored (%s)", type(exc).__name__)
        img.load()
        return img


# Our own checks replace PIL's global bomb limit (it would fire at a different size).
Image.MAX_IMAGE_PIXELS = None
Image.init()
# The parsers PIL may run on a body: the accepted formats' own (MPO is JPEG's, not separate).
_PARSERS: list[str] = sorted(fmt for fmt in ALLOWED_FORMATS if fmt in Image.OPEN)
