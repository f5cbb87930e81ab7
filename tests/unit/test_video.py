"""Reading video samples: which frames come back, what the header predicts, and bad files.

Videos are written with PyAV itself; frame ``i`` is a solid colour from a palette whose colours
differ by 70 in some channel, so a returned frame is identified by its nearest palette colour
even after a lossy codec has shifted it a little.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from PIL import Image
from transformers import video_utils

from helpers import COLOUR_TOLERANCE, PALETTE, make_video
from llava_lite.data.bad_samples import BadSampleError
from llava_lite.data.video import VideoSampling, frame_indices, load_frames, video_frame_count


def frame_ids(frames: list[Image.Image]) -> list[int]:
    """Which palette frame each image is; fails when one is not close to any palette colour."""
    ids = []
    for img in frames:
        assert img.mode == "RGB"
        mean = np.asarray(img, np.float64).reshape(-1, 3).mean(axis=0)
        dist = np.abs(np.asarray(PALETTE) - mean).max(axis=1)
        assert dist.min() <= COLOUR_TOLERANCE, f"frame colour {mean} matches no palette colour"
        ids.append(int(dist.argmin()))
    return ids


def transformers_indices(total: int, n: int | None = None, fps: float | None = None, video_fps=None) -> list:
    """What LlavaOnevisionVideoProcessor.sample_frames picks (default_sample_indices_fn)."""
    metadata = video_utils.VideoMetadata(total_num_frames=total, fps=video_fps)
    return video_utils.default_sample_indices_fn(metadata, num_frames=n, fps=fps).tolist()


def bad_sample(reason: str, fn, *args, **kwargs) -> BadSampleError:
    with pytest.raises(BadSampleError) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


# --- sampling rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": 2.5},
        {"fps": 0.0},
        {"fps": -1.0},
        {"fps": float("nan")},
        {"fps": float("inf")},
        {"min_frames": 0},
        {"num_frames": 4, "min_frames": 5},
    ],
)
def test_sampling_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="VideoSampling"):
        VideoSampling(**kwargs)


def test_uniform_indices_equal_transformers():
    for total in range(1, 160):
        for n in range(1, min(total, 40) + 1):
            assert frame_indices(total, VideoSampling(num_frames=n), None) == transformers_indices(total, n)
    # the helper the brief names (deprecated in transformers 5.x; float arange, it can return n + 1)
    legacy = getattr(video_utils, "get_uniform_frame_indices", None)
    if legacy is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            assert frame_indices(30, VideoSampling(num_frames=8), None) == legacy(30, 8).tolist()


def test_fps_indices_equal_transformers_below_the_cap():
    for total in range(1, 120):
        for video_fps in (10, 24, 29.97, 30):
            for fps in (0.5, 1, 2, 3.3):
                ours = frame_indices(total, VideoSampling(num_frames=1000, fps=fps), video_fps)
                assert ours == transformers_indices(total, fps=fps, video_fps=video_fps)
    # capped at num_frames: then it is uniform num_frames sampling
    assert frame_indices(300, VideoSampling(num_frames=8, fps=2), 10) == frame_indices(
        300, VideoSampling(), None
    )


def test_short_and_empty_clips_yield_what_they_have():
    assert frame_indices(3, VideoSampling(num_frames=8), None) == [0, 1, 2]
    assert frame_indices(0, VideoSampling(), None) == []
    assert frame_indices(30, VideoSampling(fps=0.01), 10) == [0]  # at least one frame
    with pytest.raises(ValueError, match="frame rate"):
        frame_indices(30, VideoSampling(fps=1), None)


# --- video files --------------------------------------------------------------------------------


def test_uniform_sampling_picks_transformers_frames(tmp_path):
    path = make_video(tmp_path / "clip.mp4", 30)
    sampling = VideoSampling(num_frames=8)
    frames = load_frames(str(path), sampling)
    assert frame_ids(frames) == transformers_indices(30, 8) == [0, 3, 7, 11, 15, 18, 22, 26]
    assert video_frame_count(str(path), sampling) == len(frames) == 8
    assert {f.size for f in frames} == {(48, 32)}


def test_fps_sampling(tmp_path):
    path = make_video(tmp_path / "clip.mp4", 30, rate=10)  # 3 s
    sampling = VideoSampling(num_frames=8, fps=2)
    frames = load_frames(str(path), sampling)
    assert frame_ids(frames) == [0, 5, 10, 15, 20, 25]  # int(3 s x 2 fps) = 6 frames, 0.5 s apart
    assert video_frame_count(str(path), sampling) == 6
    capped = VideoSampling(num_frames=4, fps=2)
    assert frame_ids(load_frames(str(path), capped)) == [0, 7, 15, 22]
    assert video_frame_count(str(path), capped) == 4


def test_short_video(tmp_path):
    path = make_video(tmp_path / "short.mp4", 3)
    frames = load_frames(str(path), VideoSampling(num_frames=8))
    assert frame_ids(frames) == [0, 1, 2]
    assert video_frame_count(str(path), VideoSampling(num_frames=8)) == 3
    err = bad_sample("short_video", load_frames, str(path), VideoSampling(num_frames=8, min_frames=4))
    assert str(path) in str(err) and "min_frames=4" in str(err)


def test_empty_video_is_short(tmp_path):
    # An AVI keeps its video stream with no frames (an empty MP4 drops the stream: unreadable)
    path = make_video(tmp_path / "empty.avi", 0)
    assert video_frame_count(str(path), VideoSampling()) is None  # the header does not say
    assert str(path) in str(bad_sample("short_video", load_frames, str(path), VideoSampling()))


def test_relative_path_joins_root_and_absolute_ignores_it(tmp_path):
    (tmp_path / "sub").mkdir()
    make_video(tmp_path / "sub" / "clip.mp4", 5)
    sampling = VideoSampling(num_frames=2)
    assert frame_ids(load_frames("sub/clip.mp4", sampling, root=str(tmp_path))) == [0, 2]
    assert video_frame_count("sub/clip.mp4", sampling, root=str(tmp_path)) == 2
    absolute = str(tmp_path / "sub" / "clip.mp4")
    assert frame_ids(load_frames(absolute, sampling, root="/elsewhere")) == [0, 2]


def test_missing_video(tmp_path):
    err = bad_sample("missing_video", load_frames, "nope.mp4", VideoSampling(), root=str(tmp_path))
    assert str(tmp_path / "nope.mp4") in str(err)
    assert video_frame_count("nope.mp4", VideoSampling(), root=str(tmp_path)) is None


def test_random_bytes_are_unreadable(tmp_path):
    rng = random.Random(0)
    for k in range(5):
        path = tmp_path / f"random{k}.mp4"
        path.write_bytes(rng.randbytes(4000))
        err = bad_sample("unreadable_video", load_frames, str(path), VideoSampling())
        assert str(path) in str(err)
        assert video_frame_count(str(path), VideoSampling()) is None


def test_no_video_stream_is_unreadable(tmp_path):
    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert "no video stream" in str(bad_sample("unreadable_video", load_frames, str(path), VideoSampling()))
    assert video_frame_count(str(path), VideoSampling()) is None


def decodable_frames(path: Path) -> int | None:
    """Frames PyAV decodes before the end, or None when opening or decoding raises."""
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams or streams[0].codec_context is None:  # decoding that segfaults PyAV 15
                return None
            return sum(1 for _ in container.decode(streams[0]))
    except av.error.FFmpegError:
        return None


@pytest.mark.parametrize("faststart", [False, True])
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 0.6, 0.75, 0.9, 0.99])
def test_truncated_video_is_unreadable_or_resampled(tmp_path, faststart, keep):
    """Moov at the end (the default): a cut file does not open, or has no decodable stream. Moov
    first (faststart): the header still lists 30 frames; the frames before the cut decode and are
    sampled uniformly anew. Never a crash or another exception type."""
    whole = make_video(tmp_path / "whole.mp4", 30, options={"movflags": "faststart"} if faststart else None)
    data = whole.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * keep)])
    sampling = VideoSampling(num_frames=8)
    decoded = decodable_frames(path)
    if not decoded:  # raises, or nothing decodes
        err = bad_sample("unreadable_video", load_frames, str(path), sampling)
        assert str(path) in str(err)
    else:
        frames, expected = load_frames(str(path), sampling), frame_indices(decoded, sampling, None)
        assert len(frames) == len(expected)
        # the frame the cut runs through decodes half-concealed (no error from FFmpeg): skip its colour
        intact = [(img, i) for img, i in zip(frames, expected, strict=True) if i < decoded - 1]
        assert frame_ids([img for img, _ in intact]) == [i for _, i in intact]
    assert video_frame_count(str(path), sampling) in (None, 8)  # the header, when it opens


def test_odd_size_comes_back_at_its_own_size(tmp_path):
    try:
        path = make_video(tmp_path / "odd.mp4", 4, width=33, height=47)
    except av.error.FFmpegError as err:  # pragma: no cover - depends on the FFmpeg build
        pytest.skip(f"mpeg4 in this FFmpeg build does not encode 33x47: {err}")
    frames = load_frames(str(path), VideoSampling(num_frames=8))
    assert frame_ids(frames) == [0, 1, 2, 3]
    assert {(f.size, f.mode) for f in frames} == {((33, 47), "RGB")}


def test_frame_count_from_duration_when_header_has_no_count(tmp_path):
    # Matroska stores no frame count: the count is duration x average rate
    path = make_video(tmp_path / "clip.mkv", 12, codec="ffv1")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    sampling = VideoSampling(num_frames=5)
    frames = load_frames(str(path), sampling)
    assert video_frame_count(str(path), sampling) == len(frames) == 5
    assert frame_ids(frames) == transformers_indices(12, 5)


def test_fsspec_url(tmp_path):
    path = make_video(tmp_path / "clip.mp4", 10)
    fs = fsspec.filesystem("memory")
    fs.pipe("/videos/clip.mp4", path.read_bytes())
    try:
        sampling = VideoSampling(num_frames=4)
        assert frame_ids(load_frames("clip.mp4", sampling, root="memory://videos")) == [0, 2, 5, 7]
        assert video_frame_count("memory://videos/clip.mp4", sampling) == 4
        bad_sample("missing_video", load_frames, "memory://videos/other.mp4", sampling)
    finally:
        fs.rm("/videos", recursive=True)


# --- frame folders ------------------------------------------------------------------------------


def write_frames(folder: Path, n: int, ext: str = "png") -> None:
    folder.mkdir()
    order = list(range(1, n + 1))
    random.Random(1).shuffle(order)  # creation order must not matter
    for i in order:
        Image.new("RGB", (20, 10), PALETTE[i - 1]).save(folder / f"frame_{i}.{ext}")


def test_frame_folder_natural_order(tmp_path):
    folder = tmp_path / "frames"
    write_frames(folder, 12)
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".frame_0.png").write_bytes(b"")  # hidden: skipped
    sampling = VideoSampling(num_frames=8)
    frames = load_frames("frames", sampling, root=str(tmp_path))
    # natural order: frame_1..frame_12 are frames 0..11 (a plain sort would put frame_10 second)
    assert frame_ids(frames) == transformers_indices(12, 8) == [0, 1, 3, 4, 6, 7, 9, 10]
    assert video_frame_count("frames", sampling, root=str(tmp_path)) == 8
    assert {f.size for f in frames} == {(20, 10)}
    assert frame_ids(load_frames(str(folder), VideoSampling(num_frames=20))) == list(range(12))


def test_frame_folder_extensions_any_case(tmp_path):
    folder = tmp_path / "frames"
    write_frames(folder, 3, ext="PNG")
    Image.new("RGB", (20, 10), PALETTE[3]).save(folder / "frame_4.Jpeg", format="JPEG", quality=95)
    assert frame_ids(load_frames(str(folder), VideoSampling())) == [0, 1, 2, 3]


def test_frame_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    err = bad_sample("unreadable_video", load_frames, str(empty), VideoSampling())
    assert str(empty) in str(err)
    assert video_frame_count(str(empty), VideoSampling()) is None

    broken = tmp_path / "broken"
    write_frames(broken, 3)
    (broken / "frame_2.png").write_bytes(b"not a png")
    err = bad_sample("unreadable_video", load_frames, str(broken), VideoSampling())
    assert "frame_2.png" in str(err)

    short = tmp_path / "short"
    write_frames(short, 2)
    bad_sample("short_video", load_frames, str(short), VideoSampling(min_frames=3))


def test_fps_sampling_of_a_folder_is_a_config_error(tmp_path):
    folder = tmp_path / "frames"
    write_frames(folder, 4)
    sampling = VideoSampling(fps=1)
    for fn in (load_frames, video_frame_count):
        with pytest.raises(ValueError, match="frame rate") as info:
            fn(str(folder), sampling)
        assert not isinstance(info.value, BadSampleError)
