"""Request bytes -> RGB image, safely.

Every way a request can be wrong ends in ``InputError`` with a stable ``code`` (used in the
JSON error body and as the bounded ``reason`` label of the rejection metric) and the HTTP
status the client gets. Nothing here logs or echoes payload bytes.

Hardening (see docs/security.md): PIL only ever tries the accepted formats' parsers (no
Ghostscript-backed EPS, no exotic plugins), the declared size is checked before any pixel
is decoded, PNG chunk checksums are verified, JSON nesting bombs and non-object JSON bodies
are refused, and anything else a decoder raises on hostile bytes becomes a 400, so that a
payload can fail its own request but never the batch it was batched with.

Memory is bounded by design (docs/reliability.md, "Memory"): ``open_image`` reads only the
header, so the pixels a request and a TorchServe batch would decode are counted and refused
before any is decoded; ``decode_opened`` decodes to the *working resolution* the detector and
the crops need (JPEG by DCT scaling, other formats reduced right after decoding), so one
image at a time is held at full size, and only briefly.
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
from collections.abc import Iterator
from contextlib import contextmanager
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
    "too_many_pixels",
    "server_busy",
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
    # decoded pixels (after DCT scaling) of all images of one request / one TorchServe batch
    max_request_pixels: int = 64_000_000
    max_batch_pixels: int = 128_000_000


# Integer reductions tried, largest first (the ones libjpeg's DCT scaling offers).
_REDUCTIONS: tuple[int, ...] = (8, 4, 2)
# Modes PIL's Image.reduce handles; others are converted to RGB first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr",
                              "I", "F"})
_EXIF_ORIENTATION = 0x0112


def reduction_for(size: tuple[int, int], working_side: int | None) -> int:
    """The largest of 8, 4, 2 that keeps the long side at ``working_side`` or more (else 1).

    The detector letterboxes the whole image to 256 px and never looks at more than twice
    that; the crops need the face at the model's input size. A long side of 1024 keeps
    every face the whole-image passes can find at >= ~2x the crop resolution.
    """
    if not working_side:
        return 1
    side = max(size)
    return next((k for k in _REDUCTIONS if side // k >= working_side), 1)


@dataclass
class OpenedImage:
    """An image whose header is read and checked; no pixel is decoded yet."""

    image: Image.Image
    raw: bytes
    width: int  # as stored (before EXIF rotation)
    height: int
    working_side: int | None

    @property
    def decoded_pixels(self) -> int:
        """Pixels the decoder will produce: what a request costs in memory and time."""
        w, h = self.image.size  # already DCT-scaled for a JPEG in draft mode
        return w * h


@dataclass(frozen=True)
class DecodedImage:
    """RGB pixels at working resolution, and the size the client's image has.

    ``width`` x ``height`` are the full-resolution, EXIF-rotated image's: boxes are reported
    in those pixels, ``scale`` maps array pixels to them.
    """

    array: np.ndarray  # (h, w, 3) uint8
    width: int
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        h, w = self.array.shape[:2]
        return self.width / w, self.height / h


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


@contextmanager
def _decoder_errors(raw: bytes) -> Iterator[None]:
    """Whatever a decoder raises on hostile bytes becomes this request's 4xx, never a 500."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
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


def open_image(
    raw: bytes, limits: DecodeLimits = DecodeLimits(), working_side: int | None = None
) -> OpenedImage:
    """Read and check the header only; a JPEG is set to decode at working resolution.

    ``working_side``: decode to the smallest 1/2, 1/4 or 1/8 scale whose long side is still
    that many pixels (``reduction_for``); None = full resolution.
    """
    if not raw:
        raise InputError("empty_body", "the image is empty")
    _check_size(raw, limits)
    what = _describe_non_image(raw)
    if what is not None:
        raise InputError("unsupported_type", f"the body is {what}, not an accepted image", 415)
    with _decoder_errors(raw):
        img = _open(raw, limits)
        w, h = img.size
        k = reduction_for((w, h), working_side)
        if k > 1 and img.format in ("JPEG", "MPO"):
            img.draft(None, (w // k, h // k))
    return OpenedImage(img, raw, w, h, working_side)


def decode_opened(opened: OpenedImage) -> DecodedImage:
    """Decode an opened image to RGB at working resolution, EXIF orientation applied.

    The full-resolution pixels (non-JPEG formats) live only until they are reduced.
    Animated images (GIF, WebP, APNG): the first frame is analysed. EXIF that cannot be
    parsed is ignored (cameras write broken EXIF; the pixels are still good).
    """
    with _decoder_errors(opened.raw):
        img = opened.image
        img.seek(0)
        img.load()
        k = reduction_for(img.size, opened.working_side)
        if k > 1:
            if img.mode not in _REDUCIBLE_MODES:
                img = _to_rgb(img)
            img = img.reduce(k)
        img, swapped = _exif_transposed(img)
        rgb = _to_rgb(img)
        del img
        arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError("undecodable_image", "the image could not be converted to RGB")
    width, height = (opened.height, opened.width) if swapped else (opened.width, opened.height)
    return DecodedImage(np.ascontiguousarray(arr), width, height)


def decode_image(raw: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Encoded image -> RGB uint8 array (H, W, 3) at full resolution, EXIF orientation applied.

    What training reads images with; serving decodes at working resolution instead.
    """
    return decode_opened(open_image(raw, limits)).array


def check_pixel_budget(pixels: int, limits: DecodeLimits) -> None:
    """413 for a request whose images together would decode to more than the budget."""
    if pixels > limits.max_request_pixels:
        raise InputError(
            "too_many_pixels",
            f"the request's images decode to {pixels} pixels; the limit is "
            f"{limits.max_request_pixels} per request (send fewer or smaller images)",
            status=413,
        )


def batch_busy_error(limits: DecodeLimits) -> InputError:
    """503 for a request that fits the request budget but not what is left of its batch's."""
    return InputError(
        "server_busy",
        f"the images batched with this request already use the {limits.max_batch_pixels} "
        "pixels one batch may decode; retry",
        status=503,
    )


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


def _exif_transposed(img: Image.Image) -> tuple[Image.Image, bool]:
    """The image as the camera meant it, and whether that swapped width and height."""
    try:
        orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
        if orientation not in range(2, 9):  # upright: no transposed copy of the pixels
            return img, False
        return ImageOps.exif_transpose(img), orientation in (5, 6, 7, 8)
    except Exception as exc:  # malformed EXIF: keep the pixels as stored
        LOG.debug("EXIF ignored (%s)", type(exc).__name__)
        img.load()
        return img, False


# Our own checks replace PIL's global bomb limit (it would fire at a different size).
Image.MAX_IMAGE_PIXELS = None
Image.init()
# The parsers PIL may run on a body: the accepted formats' own (MPO is JPEG's, not separate).
_PARSERS: list[str] = sorted(fmt for fmt in ALLOWED_FORMATS if fmt in Image.OPEN)
