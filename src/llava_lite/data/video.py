"""Reading a record's video (a file, or a folder of frame images) as a few sampled RGB frames.

Used for LLaVA-OneVision-style video samples (``"video": "clip.mp4"``, the LLaVA-Video-178K
format). The model spends a fixed number of tokens per frame, so :func:`video_frame_count`
says how many frames :func:`load_frames` will return from the container header alone, without
decoding, for length grouping.

Decoder: PyAV (maintained, FFmpeg in its wheels, transformers' default ``load_video`` backend);
torchvision's video reader is deprecated and decord is unmaintained.

Policies:

- Sampling is uniform over the whole clip, frame ``i`` of ``n`` being ``i * total // n``: the
  rule of transformers' ``default_sample_indices_fn`` (what ``LlavaOnevisionVideoProcessor``
  samples with), so the same frames come out here and there. (The deprecated
  ``get_uniform_frame_indices`` agrees for 8 of 30 but not always: its float ``arange`` can
  differ by one and even return ``n + 1`` indices, e.g. 8 for 7 of 17.)
- A clip with fewer frames than ``num_frames`` yields all of its frames (its token count follows
  its frame count); fewer than ``min_frames`` frames, none included, is a ``short_video``.
- ``fps`` sampling yields ``max(1, int(total / video_fps * fps))`` frames (transformers' count),
  capped at ``num_frames`` and at the clip's frames, spread uniformly like the above.
- A folder's image files (``VIDEO_FRAME_EXTENSIONS``, any case; hidden files skipped) in natural
  name order (``frame_2`` before ``frame_10``) are its frames. A folder has no frame rate, so
  ``fps`` sampling on one is a configuration error (``ValueError``), not a bad sample.
- The header's frame count defines the clip; when decoding ends cleanly before the chosen
  frames are reached (a truncated file), the frames that did decode are sampled anew.
  An FFmpeg error while decoding makes the sample ``unreadable_video``, and so does a stream
  FFmpeg found no codec for (decoding one segfaults PyAV 15, so it is never tried).
- Paths resolve like image paths; fsspec URLs work too (local files go straight to FFmpeg).
- Decoding is sequential and keeps only the chosen frames, stopping at the last one, so a long
  video never sits in memory whole.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.images import open_image, resolve_image_path

__all__ = ["VIDEO_FRAME_EXTENSIONS", "VideoSampling", "frame_indices", "load_frames", "video_frame_count"]

VIDEO_FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# What a broken or odd file raises inside PyAV (InvalidDataError, EOFError... are FFmpegErrors;
# bad metadata or pixel formats raise ValueError) or fsspec (OSError).
_BYTES_NAME = "<video bytes>"  # how errors name a video given as bytes (the dataset adds record and file)
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError)


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video become the sample.

    ``num_frames``: frames sampled uniformly over the whole clip (all of them when it has fewer).
    ``fps``: sample at this rate instead, at most ``num_frames`` frames (video files only).
    ``min_frames``: a video yielding fewer frames is a ``short_video`` bad sample.
    """

    num_frames: int = 8
    fps: float | None = None
    min_frames: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"VideoSampling.num_frames={self.num_frames!r}; must be an int >= 1")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"VideoSampling.fps={self.fps!r}; must be None or a finite rate > 0")
        if (
            isinstance(self.min_frames, bool)
            or not isinstance(self.min_frames, int)
            or not 1 <= self.min_frames <= self.num_frames
        ):
            raise ValueError(
                f"VideoSampling.min_frames={self.min_frames!r}; must be an int in [1, num_frames={self.num_frames}]"
            )


def frame_indices(total_frames: int, sampling: VideoSampling, fps_of_video: float | None) -> list[int]:
    """The (sorted, distinct) indices of the frames to keep of a clip of ``total_frames`` frames.

    Equal to transformers' ``default_sample_indices_fn`` whenever it does not refuse (it raises
    when asked for more frames than the clip has; this yields all of them instead).
    """
    if total_frames <= 0:
        return []
    count = min(sampling.num_frames, total_frames)
    if sampling.fps is not None:
        if not fps_of_video or fps_of_video <= 0:
            raise ValueError(f"fps sampling needs the video's frame rate; got fps_of_video={fps_of_video!r}")
        # float() first: the same arithmetic as transformers, so the count agrees at boundaries
        count = min(count, max(1, int(total_frames / float(fps_of_video) * sampling.fps)))
    return [i * total_frames // count for i in range(count)]


def video_frame_count(source: str | bytes, sampling: VideoSampling, root: str | None = None) -> int | None:
    """How many frames :func:`load_frames` will return, read from the header without decoding.

    None when the header does not say (no frame count, duration or needed frame rate) or the
    source is missing or unreadable: the sample reports its own error when loaded. It does not
    apply ``min_frames`` (loading does). Raises ``ValueError`` for fps sampling of a folder.
    """
    if isinstance(source, bytes):  # a video file's bytes (a WebDataset shard's)
        fs, path, where, is_dir = None, source, _BYTES_NAME, False
    else:
        where = resolve_image_path(source, root)
        try:
            fs, path = fsspec.core.url_to_fs(where)
            is_dir = fs.isdir(path)
        except OSError:
            return None
    if is_dir:
        _check_folder_sampling(where, sampling)
        try:
            n_files = len(_frame_files(fs, path))
        except OSError:
            return None
        return len(frame_indices(n_files, sampling, None)) or None  # no images: unreadable
    try:
        with _open_container(fs, path) as container:
            stream = _video_stream(container, where)
            total, rate = _header_frames(container, stream), _frame_rate(stream)
    except (BadSampleError, *_DECODE_ERRORS):
        return None
    if total is None or (sampling.fps is not None and rate is None):
        return None
    return len(frame_indices(total, sampling, rate))


def load_frames(source: str | bytes, sampling: VideoSampling, root: str | None = None) -> list[Image.Image]:
    """The sampled frames of a video file or frame folder, as RGB images at their own size.

    ``source`` is joined to ``root`` like an image path (absolute paths and URLs pass through).
    Raises ``BadSampleError``: ``missing_video``, ``unreadable_video`` or ``short_video``.
    """
    if isinstance(source, bytes):  # a video file's bytes (a WebDataset shard's)
        frames = _load_file(None, source, _BYTES_NAME, sampling)
        where = _BYTES_NAME
    else:
        where = resolve_image_path(source, root)
        try:
            fs, path = fsspec.core.url_to_fs(where)
            exists, is_dir = fs.exists(path), fs.isdir(path)
        except OSError as err:
            raise BadSampleError("unreadable_video", f"{where}: {err}") from err
        if not exists:
            raise BadSampleError("missing_video", f"{where} not found")
        frames = _load_folder(fs, path, where, sampling) if is_dir else _load_file(fs, path, where, sampling)
    if len(frames) < sampling.min_frames:
        raise BadSampleError(
            "short_video", f"{where}: {len(frames)} frame(s), fewer than min_frames={sampling.min_frames}"
        )
    return frames


# --- video files --------------------------------------------------------------------------------


@contextmanager
def _open_container(
    fs: fsspec.AbstractFileSystem | None, path: str | bytes
) -> Iterator[av.container.InputContainer]:
    """A PyAV input container; local files by path (FFmpeg's own I/O), others through fsspec,
    and a file's bytes (``fs`` None) from memory."""
    if isinstance(path, bytes):
        with av.open(io.BytesIO(path), metadata_errors="ignore") as container:
            yield container
    elif isinstance(fs, LocalFileSystem):
        with av.open(path, metadata_errors="ignore") as container:
            yield container
    else:
        with fs.open(path, "rb") as f, av.open(f, metadata_errors="ignore") as container:
            yield container


def _video_stream(container: av.container.InputContainer, where: str) -> av.VideoStream:
    if not container.streams.video:
        raise BadSampleError("unreadable_video", f"{where}: no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        # FFmpeg found no codec parameters (e.g. a file cut inside its first frame); decoding
        # such a stream segfaults the process (seen with PyAV 15.1; PyAV issue #2344): never try
        raise BadSampleError("unreadable_video", f"{where}: no decoder for its video stream (truncated?)")
    return stream


def _header_frames(container: av.container.InputContainer, stream: av.VideoStream) -> int | None:
    """The frame count the header gives (directly, or as duration x average rate); None if unknown."""
    if stream.frames > 0:
        return stream.frames
    rate = stream.average_rate
    if not rate:
        return None
    seconds: Fraction | float | None = None
    if stream.duration and stream.time_base:
        seconds = stream.duration * stream.time_base
    elif container.duration:
        seconds = container.duration / av.time_base
    total = round(seconds * rate) if seconds else 0
    return total if total > 0 else None


def _frame_rate(stream: av.VideoStream) -> Fraction | None:
    return stream.average_rate or stream.guessed_rate or stream.base_rate or None


def _decode(
    fs: fsspec.AbstractFileSystem | None, path: str | bytes, where: str, wanted: list[int] | None
) -> tuple[list[Image.Image], int]:
    """The ``wanted`` frames (all counted, none kept when None) and how many frames were decoded,
    stopping after the last wanted one: only chosen frames are ever converted or kept."""
    chosen = set(wanted or ())
    last = wanted[-1] if wanted else None
    frames: list[Image.Image] = []
    decoded = 0
    with _open_container(fs, path) as container:
        for frame in container.decode(_video_stream(container, where)):
            if decoded in chosen:
                frames.append(frame.to_image())  # rgb24 -> an RGB PIL image
            decoded += 1
            if last is not None and decoded > last:
                break
    return frames, decoded


def _load_file(
    fs: fsspec.AbstractFileSystem | None, path: str | bytes, where: str, sampling: VideoSampling
) -> list[Image.Image]:
    try:
        with _open_container(fs, path) as container:
            stream = _video_stream(container, where)
            header_total, rate = _header_frames(container, stream), _frame_rate(stream)
        if sampling.fps is not None and rate is None:
            raise BadSampleError(
                "unreadable_video", f"{where}: no frame rate in the header to sample fps from"
            )
        total = header_total if header_total is not None else _decode(fs, path, where, None)[1]  # count them
        indices = frame_indices(total, sampling, rate)
        if not indices:
            return []  # no frames at all: short_video
        frames, decoded = _decode(fs, path, where, indices)
        if decoded <= indices[-1]:  # the stream ended early: sample the frames that are there
            if decoded == 0:
                raise BadSampleError(
                    "unreadable_video", f"{where}: none of the {total} frames in its header decode"
                )
            frames, _ = _decode(fs, path, where, frame_indices(decoded, sampling, rate))
    except BadSampleError:
        raise
    except _DECODE_ERRORS as err:
        raise BadSampleError("unreadable_video", f"{where}: {_describe(err, path)}") from err
    return frames


def _describe(err: Exception, path: str) -> str:
    """One line for the error without repeating the file name FFmpeg appends."""
    if isinstance(err, av.error.FFmpegError) and err.strerror:
        where = f" in {err.filename}" if err.filename and err.filename != path else ""
        return f"{type(err).__name__}: {err.strerror}{where}"
    return f"{type(err).__name__}: {err}"


# --- frame folders ------------------------------------------------------------------------------


def _check_folder_sampling(where: str, sampling: VideoSampling) -> None:
    if sampling.fps is not None:
        raise ValueError(
            f"fps sampling needs a frame rate and the frame folder {where} has none: use num_frames, fps=None"
        )


def _natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """``frame_2`` before ``frame_10``: digit runs compare as numbers (odd split positions)."""
    parts = re.split(r"([0-9]+)", name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def _frame_files(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """The folder's image files (full paths) in natural name order."""
    files = [
        entry["name"]
        for entry in fs.ls(path, detail=True)
        if entry.get("type") == "file"
        and (name := _basename(entry["name"])).lower().endswith(VIDEO_FRAME_EXTENSIONS)
        and not name.startswith(".")
    ]
    return sorted(files, key=lambda p: _natural_key(_basename(p)))


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _load_folder(
    fs: fsspec.AbstractFileSystem, path: str, where: str, sampling: VideoSampling
) -> list[Image.Image]:
    _check_folder_sampling(where, sampling)
    try:
        files = _frame_files(fs, path)
    except OSError as err:
        raise BadSampleError("unreadable_video", f"{where}: {err}") from err
    if not files:
        raise BadSampleError(
            "unreadable_video",
            f"{where}: a frame folder with no image files ({', '.join(VIDEO_FRAME_EXTENSIONS)})",
        )
    frames = []
    for i in frame_indices(len(files), sampling, None):
        try:
            with fs.open(files[i], "rb") as f:
                data = f.read()
            frames.append(open_image(data))
        except (BadSampleError, OSError) as err:
            detail = err.detail if isinstance(err, BadSampleError) else str(err)
            raise BadSampleError("unreadable_video", f"{where}: frame {files[i]}: {detail}") from err
    return frames
