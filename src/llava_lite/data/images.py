"""Opening images (local paths or fsspec URLs) and making them square the LLaVA way.

Every failure becomes a ``BadSampleError`` with reason ``missing_image`` or
``unreadable_image``; the image is fully decoded here so a truncated file fails now, not
later inside a worker's collate.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import fsspec
from PIL import Image, UnidentifiedImageError

from llava_lite.config import IMAGE_ASPECTS
from llava_lite.data.bad_samples import BadSampleError


def resolve_image_path(image: str, image_root: str | None) -> str:
    """Join a record's image path (may have folder prefixes) to the root; URLs pass through."""
    if "://" in image or image.startswith("/") or not image_root:
        return image
    return posixpath.join(str(image_root).rstrip("/"), image)


def open_image(source: str | bytes | Image.Image, image_root: str | None = None) -> Image.Image:
    """A decoded RGB PIL image from a path, an fsspec URL, raw bytes or a PIL image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, bytes):
        data, where = source, "<bytes>"
    else:
        where = resolve_image_path(source, image_root)
        try:
            with fsspec.open(where, "rb") as f:
                data = f.read()
        except FileNotFoundError as err:
            raise BadSampleError("missing_image", f"{where} not found") from err
        except OSError as err:
            raise BadSampleError("unreadable_image", f"{where}: {err}") from err
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: truncated files raise here
            return img.convert("RGB")
    except UnidentifiedImageError as err:
        raise BadSampleError("unreadable_image", f"{where}: not an image PIL can identify") from err
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise BadSampleError("unreadable_image", f"{where}: {err}") from err


def image_size(source: str | bytes, image_root: str | None = None) -> tuple[int, int] | None:
    """``(height, width)`` from the file's header alone (nothing decoded), or None when unreadable:
    length grouping counts AnyRes tokens with it, and the sample itself reports a bad file."""
    try:
        if isinstance(source, bytes):
            with Image.open(io.BytesIO(source)) as img:
                return img.height, img.width
        with fsspec.open(resolve_image_path(source, image_root), "rb") as f, Image.open(f) as img:
            return img.height, img.width
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def expand_to_square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the short side evenly with ``background`` (LLaVA-1.5's ``pad`` aspect)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def center_crop_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def processor_size(image_processor: Any) -> int:
    """The square side the vision tower expects, read from a transformers image processor."""
    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if not size:
            continue
        if isinstance(size, int):
            return size
        size = dict(size)
        for key in ("height", "shortest_edge"):
            if size.get(key):
                return int(size[key])
    raise ValueError(f"cannot read an image size from {type(image_processor).__name__}")


def make_square(img: Image.Image, aspect: str, image_processor: Any) -> Image.Image:
    """Square the image so the processor's own resize/crop keeps all of it (pad, resize) or its centre (crop).

    ``pad`` is LLaVA-1.5's ``expand2square``; ``crop`` is the processor's resize + centre crop
    (LLaVA's ``image_aspect_ratio="square"``, llava-hf's processor).
    """
    if aspect == "pad":
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        return expand_to_square(img, tuple(int(m * 255) for m in mean))
    if aspect == "resize":
        side = processor_size(image_processor)
        return img.resize((side, side), Image.Resampling.BICUBIC)
    if aspect == "crop":
        # A centre-cropping processor (CLIP) crops after its own resize, exactly as transformers
        # and LLaVA's non-"pad" path do; cropping before resizing would sample a shifted grid.
        if getattr(image_processor, "do_center_crop", False):
            return img
        return center_crop_square(img)
    raise ValueError(f"image_aspect={aspect!r}; valid: {list(IMAGE_ASPECTS)}")
