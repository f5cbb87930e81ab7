"""WebDataset tar shards: LLaVA JSON + image folder in, streamable shards out (read back by
``llava_lite.data.sources``, like every other record source).

Each sample is ``{key}.json`` (the LLaVA record, unchanged) plus ``{key}.{ext}`` (the image
file's bytes, not re-encoded) when the record has an image, or ``{key}.img0.{ext}``,
``{key}.img1.{ext}``, ... in order when it has several, and ``{key}.mp4`` (its own extension)
for a video file (a folder of frames is refused: encode it as a video first). Keys are the record's global
position (``%09d``), so shard order is record order. Shards are written and read through
fsspec, so ``out_dir`` and shard URLs may be local paths or any fsspec URL.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

import fsspec
from PIL import Image, UnidentifiedImageError
from webdataset import TarWriter

from llava_lite.config import IMAGE_TOKEN, VIDEO_TOKEN
from llava_lite.data.bad_samples import BadSampleCounter, BadSampleError, check_policy
from llava_lite.data.images import resolve_image_path
from llava_lite.data.preference import check_pair
from llava_lite.data.schema import check_record
from llava_lite.data.sources import IMAGE_EXTS, VIDEO_EXTS, read_records

log = logging.getLogger(__name__)


@dataclass
class ConversionResult:
    shards: list[str]
    written: int
    counter: BadSampleCounter = field(default_factory=BadSampleCounter)


def _image_ext(path: str) -> str:
    ext = posixpath.splitext(path)[1].lower().lstrip(".")
    ext = {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)
    return ext if ext in IMAGE_EXTS else "jpg"


def _video_file(path: str, image_root: str | None) -> tuple[str, bytes]:
    """(extension, bytes) of a record's video file; a folder of frames has no one file to store."""
    where = resolve_image_path(path, image_root)
    fs, local = fsspec.core.url_to_fs(where)
    if fs.isdir(local):
        raise BadSampleError(
            "unreadable_video",
            f"{where} is a folder of frames; a shard holds a video file (encode it as one)",
        )
    ext = posixpath.splitext(local)[1].lower().lstrip(".")
    if ext not in VIDEO_EXTS:
        raise BadSampleError("unreadable_video", f"{where}: not one of the video types {list(VIDEO_EXTS)}")
    try:
        with fs.open(local, "rb") as f:
            return ext, f.read()
    except FileNotFoundError as err:
        raise BadSampleError("missing_video", f"{where} not found") from err


def _read_image_bytes(path: str, image_root: str | None) -> bytes:
    where = resolve_image_path(path, image_root)
    try:
        with fsspec.open(where, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        raise BadSampleError("missing_image", f"{where} not found") from err
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise BadSampleError("unreadable_image", f"{where}: {type(err).__name__}") from err
    return data


def convert_to_wds(
    records: str | Sequence[str],
    out_dir: str,
    image_root: str | None = None,
    shard_size: int = 1000,
    prefix: str = "shard",
    on_bad_sample: str = "skip",
    preference: bool = False,
) -> ConversionResult:
    """Write ``{out_dir}/{prefix}-000000.tar`` ... with at most ``shard_size`` samples each.

    ``preference``: the records are preference pairs (``llava_lite.data.preference``), checked
    as pairs and written as the LLaVA pair each format reads as.

    Bad records (structure, missing or unreadable image) follow ``on_bad_sample``: skipped
    ones are counted in the result's ``counter`` and logged; ``"raise"`` names record and file.
    """
    check_policy(on_bad_sample)
    result = ConversionResult(shards=[], written=0)
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    writer: TarWriter | None = None
    stream = None
    try:
        for position, raw in enumerate(read_records(records)):
            try:
                # shards keep video records for models that read them
                (check_pair if preference else check_record)(raw, IMAGE_TOKEN, VIDEO_TOKEN)
                assert raw.record is not None
                sample = {"__key__": f"{position:09d}", "json": json.dumps(raw.record).encode()}
                if raw.has_video:
                    name, data = _video_file(raw.video_path, image_root)
                    sample[name] = data
                paths = raw.image_paths
                for i, path in enumerate(paths):  # one image: {key}.jpg; several: {key}.img0.jpg, ...
                    name = _image_ext(path) if len(paths) == 1 else f"img{i}.{_image_ext(path)}"
                    sample[name] = _read_image_bytes(path, image_root)
            except BadSampleError as err:
                err = err.located(raw.record_id, raw.source)
                if on_bad_sample == "raise":
                    raise err from None
                result.counter.add(err.report())
                continue
            if writer is None or result.written % shard_size == 0:
                if writer is not None:
                    writer.close()
                    stream.close()
                path = posixpath.join(root, f"{prefix}-{len(result.shards):06d}.tar")
                stream = fs.open(path, "wb")
                writer = TarWriter(stream)
                result.shards.append(fs.unstrip_protocol(path) if "://" in out_dir else path)
            writer.write(sample)
            result.written += 1
    finally:
        if writer is not None:
            writer.close()
            stream.close()
    log.info("wrote %d samples to %d shards in %s", result.written, len(result.shards), out_dir)
    return result
