"""Record sources: JSON lists, JSONL files and WebDataset tars (paths, globs, fsspec URLs).

Each yields :class:`~llava_lite.data.schema.RawRecord` objects in file order. Reading never
drops anything on its own: a line that is not a JSON object comes back as a ``RawRecord``
carrying a ``malformed_json`` error, so the caller's bad-sample policy decides and every
record keeps a stable position for sharding and resuming. Checking the structure is the
schema's work (:func:`~llava_lite.data.schema.check_record`), not the reader's.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
from webdataset.tariterators import group_by_keys, tar_file_iterator

from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.schema import RawRecord

RECORD_FORMATS = ("json", "jsonl", "wds")
# Image members of a WebDataset sample (``{key}.{ext}`` beside ``{key}.json``).
IMAGE_EXTS = ("jpg", "png", "webp", "bmp", "gif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
_DATA_SUFFIXES = (".json", ".jsonl", ".tar")


def expand_files(paths: str | Sequence[str]) -> list[str]:
    """Expand globs and folders (local or any fsspec protocol) into a sorted, de-duplicated file list.

    A folder stands for the ``.json``, ``.jsonl`` and ``.tar`` files directly inside it.
    """
    if isinstance(paths, str):
        paths = [paths]
    out: list[str] = []
    for path in paths:
        path = str(path)
        fs, root = fsspec.core.url_to_fs(path)
        if not glob.has_magic(path) and not fs.isdir(root):
            out.append(path)
            continue
        if glob.has_magic(path):
            matches = sorted(fs.glob(root))
        else:
            matches = sorted(m for m in fs.ls(root, detail=False) if m.lower().endswith(_DATA_SUFFIXES))
        if not matches:
            raise FileNotFoundError(f"no files match {path!r}")
        out += [fs.unstrip_protocol(m) if "://" in path else m for m in matches]
    return list(dict.fromkeys(out))


def file_format(path: str) -> str:
    name = path.split("?")[0].lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".tar"):
        return "wds"
    raise ValueError(f"{path}: unknown record format; expected .json, .jsonl or .tar (WebDataset)")


def iter_file(path: str, take: Callable[[], bool] | None = None) -> Iterator[RawRecord]:
    """Every record of one file, in order, malformed ones included (with ``error`` set).

    ``take`` is called once per record, in order; records it declines are passed over
    without being parsed (a reader slot skips the other slots' records cheaply).
    """
    take = take or _always
    fmt = file_format(path)
    if fmt == "wds":
        yield from iter_wds_shard(path, take)
        return
    with fsspec.open(path, "rt", encoding="utf-8") as f:
        if fmt == "json":
            try:
                items = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from err
            if not isinstance(items, list):
                raise ValueError(
                    f"{path}: a LLaVA .json file holds a list of records, got {type(items).__name__}"
                )
            for i, item in enumerate(items):
                if take():
                    yield _raw(item, path, i, "list item is not a JSON object")
            return
        for i, line in enumerate(f):
            if not line.strip() or not take():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                yield RawRecord(None, path, i, error=BadSampleError("malformed_json", f"line {i + 1}: {err}"))
                continue
            yield _raw(item, path, i, f"line {i + 1} is not a JSON object")


def _always() -> bool:
    return True


def _raw(item: Any, path: str, index: int, why: str) -> RawRecord:
    if isinstance(item, dict):
        return RawRecord(item, path, index)
    return RawRecord(None, path, index, error=BadSampleError("malformed_json", why))


def read_records(paths: str | Sequence[str]) -> Iterator[RawRecord]:
    """All records of all files (globs expanded, sorted), in a fixed order."""
    for path in expand_files(paths):
        yield from iter_file(path)


def shard_images(sample: dict[str, Any]) -> list[bytes]:
    """A shard sample's image files in order: ``{key}.jpg`` for one image, ``{key}.img0.jpg``,
    ``{key}.img1.png``, ... for several (``data.wds_shards.convert_to_wds`` writes both)."""
    numbered = {}
    for name, data in sample.items():
        stem, _, ext = name.partition(".")
        if stem.startswith("img") and stem[3:].isdigit() and ext in IMAGE_EXTS:
            numbered[int(stem[3:])] = data
    if numbered:
        return [numbered[i] for i in sorted(numbered)]
    return [sample[ext] for ext in IMAGE_EXTS if ext in sample][:1]


def iter_wds_shard(url: str, take: Callable[[], bool] | None = None) -> Iterator[RawRecord]:
    """The records of one WebDataset shard (``data.wds_shards.convert_to_wds`` writes them), with
    their image bytes attached; ``take`` as in ``iter_file``."""
    with fsspec.open(url, "rb") as f:
        files = (dict(member, __url__=url) for member in tar_file_iterator(f))
        for index, sample in enumerate(group_by_keys(files)):
            if take is not None and not take():
                continue
            key = sample.get("__key__", str(index))
            try:
                record = json.loads(sample["json"])
            except (KeyError, json.JSONDecodeError) as err:
                yield RawRecord(
                    None, url, index, error=BadSampleError("malformed_json", f"sample {key}: {err}")
                )
                continue
            if not isinstance(record, dict):
                yield RawRecord(
                    None, url, index, error=BadSampleError("malformed_json", f"sample {key}: not an object")
                )
                continue
            images = shard_images(sample)
            wanted = record.get("image")
            wanted_count = len(wanted) if isinstance(wanted, list) else 1 if wanted else 0
            if len(images) != wanted_count:
                err = BadSampleError(
                    "missing_image",
                    f"sample {key} names {wanted_count} image(s) but the shard holds {len(images)}",
                )
                yield RawRecord(record, url, index, error=err)
                continue
            video = next((sample[ext] for ext in VIDEO_EXTS if ext in sample), None)
            if record.get("video") and video is None:
                err = BadSampleError("missing_video", f"sample {key} has no video file in the shard")
                yield RawRecord(record, url, index, error=err)
                continue
            yield RawRecord(record, url, index, image_bytes=images or None, video_bytes=video)
