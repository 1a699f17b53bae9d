"""Frame-folder and PyAV readers on tiny videos whose frames encode their own index in colour.

Lossy codecs change pixel values a little, so a frame is identified by its colour (steps of 32
levels, far above the codec's error) rather than compared to the original exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, write_file

from lightning_gsf.data import video
from lightning_gsf.data.errors import SampleReadError
from lightning_gsf.data.video import FrameFolderReader, VideoFileReader, count_video_frames

NUM_FRAMES = 40
HEIGHT, WIDTH = 48, 64
FPS = 30  # not a divisor of 1000, so Matroska's millisecond timestamps are rounded
KEYFRAME_INTERVAL = 10  # short GOPs, so that seeking skips whole GOPs even in a 40-frame video
TEMPLATE = "frame_{:010d}.jpg"

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec, warning on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def frame_pixels(index: int) -> np.ndarray:
    """An (H, W, 3) RGB frame whose red and green levels spell ``index`` in base 8."""
    frame = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    frame[..., 0] = (index % 8) * 32 + 16
    frame[..., 1] = (index // 8) * 32 + 16
    return frame


def identify(clip: torch.Tensor) -> list[int]:
    """The index each frame of a ``(T, 3, H, W)`` clip was made from (see ``frame_pixels``)."""
    means = clip[:, :2].double().mean(dim=(2, 3))
    digits = ((means - 16) / 32).round().long()
    return (digits[:, 0] + 8 * digits[:, 1]).tolist()


def write_video(path: Path, codec: str, first_pts: int = 0, num_frames: int = NUM_FRAMES,
                options: dict[str, str] | None = None) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        # Key frames only every KEYFRAME_INTERVAL frames: no extra ones at the colour changes.
        no_scene_cuts = "0" if codec == "libx264" else "1000000000"  # x264 and FFmpeg disagree on the scale
        stream.options = {"g": str(KEYFRAME_INTERVAL), "sc_threshold": no_scene_cuts, **(options or {})}
        container.start_encoding()  # write the header even when no frame follows
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index), format="rgb24")
            frame.pts, frame.time_base = first_pts + index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_frame_folder(folder: Path, first_index: int = 1) -> Path:
    folder.mkdir()
    for index in range(NUM_FRAMES):
        chw = torch.from_numpy(frame_pixels(index)).permute(2, 0, 1).contiguous()
        write_file(str(folder / TEMPLATE.format(index + first_index)), encode_jpeg(chw, quality=90))
    return folder


# (codec, container suffix, pts of the first frame, B-frames asked of mpeg4): H.264 has B-frames
# (decode order differs from display order) by x264's defaults; Matroska and MP4 keep a
# non-zero first timestamp; AVI has no presentation timestamps (with B-frames FFmpeg numbers the
# first frame shown 1); Something-Something v2 ships VP9 in WebM.
VIDEO_FORMATS = [
    ("libvpx-vp9", "webm", 0, 0),
    ("libx264", "mp4", 0, 0),
    ("mpeg4", "avi", 0, 0),
    ("mpeg4", "avi", 0, 3),
    ("libx264", "mp4", 50, 0),
    ("mpeg4", "mkv", 7, 0),
    ("libx264", "mkv", 3, 0),
]
VIDEO_IDS = [f"{codec}-{suffix}-pts{first_pts}" + (f"-bf{b_frames}" if b_frames else "")
             for codec, suffix, first_pts, b_frames in VIDEO_FORMATS]


@pytest.fixture(scope="module", params=VIDEO_FORMATS, ids=VIDEO_IDS)
def video_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    codec, suffix, first_pts, b_frames = request.param
    options = {"bf": str(b_frames), "qscale": "1"} if b_frames else None  # (B-frames' colours exact enough to identify)
    folder = tmp_path_factory.mktemp(f"video_bf{b_frames}" if b_frames else "video")
    return write_video(folder / f"clip.{suffix}", codec, first_pts, options=options)


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_frame_folder(tmp_path_factory.mktemp("frames") / "video_01")


INDEX_SETS = [
    [0, 3, 3, 17, 39, 25],  # unsorted, repeated, first and last frame
    [21, 22, 23],  # the middle of the video, right after a key frame
    [19],  # the frame just before a key frame
    [39, 39, 39],
    list(range(NUM_FRAMES)),
]


@pytest.mark.parametrize("indices", INDEX_SETS)
def test_video_and_frames_give_the_same_frames(video_path: Path, frame_folder: Path, indices: list[int]) -> None:
    from_video = VideoFileReader().read(video_path, indices)
    from_frames = FrameFolderReader(TEMPLATE, first_index=1).read(frame_folder, indices)
    assert from_video.shape == from_frames.shape == (len(indices), 3, HEIGHT, WIDTH)
    assert from_video.dtype == from_frames.dtype == torch.uint8
    assert identify(from_video) == identify(from_frames) == indices


@pytest.mark.parametrize("indices", INDEX_SETS)
def test_seeking_decodes_the_same_frames_as_decoding_from_the_start(video_path: Path, indices: list[int]) -> None:
    seeking = VideoFileReader(seek=True).read(video_path, indices)
    from_start = VideoFileReader(seek=False).read(video_path, indices)
    assert torch.equal(seeking, from_start)


def test_seeking_starts_at_the_previous_key_frame(video_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[video._Decoded] = []
    original = video._decode_until

    def recording_decode_until(*args: object) -> video._Decoded:
        passes.append(original(*args))
        return passes[-1]

    monkeypatch.setattr(video, "_decode_until", recording_decode_until)
    keys = key_frames(video_path)
    # AVI seeks by decoding order, in which a key frame comes before the B-frames shown ahead
    # of it: a seek there can land past the first wanted frame, and the reader then decodes
    # from the start (right frames, more work; such files are rare).
    avi_with_b_frames = video_path.suffix == ".avi" and "bf" in video_path.parent.name
    if not avi_with_b_frames:
        assert keys == list(range(0, NUM_FRAMES, KEYFRAME_INTERVAL))
    for first in range(1, NUM_FRAMES - 1):
        passes.clear()
        assert identify(VideoFileReader().read(video_path, [first + 1, first])) == [first + 1, first]
        # One pass, from the last key frame at or before the first wanted frame to the last one.
        expected = (max(k for k in keys if k <= first), first + 1)
        if avi_with_b_frames:
            assert passes[-1].last_seen == first + 1 and passes[-1].first_seen in {expected[0], 0}
        else:
            assert [(p.first_seen, p.last_seen) for p in passes] == [expected]


def key_frames(path: Path) -> list[int]:
    """Indices of the key frames, from the packets' timestamps as the reader counts them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = video._StreamTiming.of(container, stream, path).start_pts
        return sorted(
            round((packet.pts - start) * stream.time_base * FPS)
            for packet in container.demux(stream)
            if packet.is_keyframe and packet.pts is not None
        )


@pytest.mark.parametrize(("threads", "thread_type"), [(1, "NONE"), (2, "FRAME"), (2, "SLICE"), (0, "AUTO")])
def test_decoder_threading_does_not_change_frames(video_path: Path, threads: int, thread_type: str) -> None:
    indices = [2, 13, 14, 30]
    reference = VideoFileReader(threads=1, thread_type="NONE").read(video_path, indices)
    assert torch.equal(VideoFileReader(threads=threads, thread_type=thread_type).read(video_path, indices), reference)


def test_seek_overshoot_falls_back_to_decoding_from_the_start(
    video_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the container's index is wrong: every seek asks for a timestamp 30 frames too late.
    original = video._StreamTiming.pts_of
    monkeypatch.setattr(video._StreamTiming, "pts_of", lambda self, index: original(self, index + 30))
    assert identify(VideoFileReader().read(video_path, [5, 8])) == [5, 8]


@pytest.mark.parametrize("exact", [False, True], ids=["header", "demuxed"])
def test_count_video_frames(video_path: Path, exact: bool) -> None:
    assert count_video_frames(video_path, exact=exact) == NUM_FRAMES


def test_count_video_frames_of_a_missing_or_corrupt_video(tmp_path: Path) -> None:
    with _raises_naming(tmp_path / "absent.mp4", "does not exist"):
        count_video_frames(tmp_path / "absent.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"not a video")
    with _raises_naming(tmp_path / "garbage.mp4", "cannot read"):
        count_video_frames(tmp_path / "garbage.mp4")


def test_frame_folder_decodes_each_distinct_frame_once(frame_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    original = video.decode_jpeg

    def counting_decode(data: torch.Tensor, **kwargs: object) -> torch.Tensor:
        frame = original(data, **kwargs)
        decoded.extend(identify(frame[None]))
        return frame

    monkeypatch.setattr(video, "decode_jpeg", counting_decode)
    FrameFolderReader(TEMPLATE).read(frame_folder, [4, 4, 1, 4, 1])
    assert sorted(decoded) == [1, 4]


def test_grayscale_frames_are_read_as_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "gray"
    folder.mkdir()
    write_file(str(folder / TEMPLATE.format(1)), encode_jpeg(torch.full((1, HEIGHT, WIDTH), 200, dtype=torch.uint8)))
    clip = FrameFolderReader(TEMPLATE).read(folder, [0, 0])
    assert clip.shape == (2, 3, HEIGHT, WIDTH)
    assert (clip.int() - 200).abs().max() <= 2


def test_frame_folder_first_index_zero(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "zero_based", first_index=0)
    assert identify(FrameFolderReader("frame_{:010d}.jpg", first_index=0).read(folder, [0, 39])) == [0, 39]


# --- unreadable samples -------------------------------------------------------------------


def _raises_naming(path: Path, *fragments: str) -> pytest.RaisesExc:
    return pytest.raises(SampleReadError, match=".*".join([re.escape(str(path)), *fragments]))


def test_missing_frame_folder(tmp_path: Path) -> None:
    with _raises_naming(tmp_path / "absent", "does not exist"):
        FrameFolderReader(TEMPLATE).read(tmp_path / "absent", [0])


def test_missing_frame_file_names_the_index_and_path(frame_folder: Path) -> None:
    with pytest.raises(SampleReadError, match=r"frame 40 of .*video_01: missing file .*frame_0000000041\.jpg"):
        FrameFolderReader(TEMPLATE).read(frame_folder, [3, 40])


@pytest.mark.parametrize("content", [b"", b"not a jpeg at all"], ids=["empty", "garbage"])
def test_undecodable_frame(tmp_path: Path, content: bytes) -> None:
    folder = write_frame_folder(tmp_path / "video")
    (folder / TEMPLATE.format(6)).write_bytes(content)
    with pytest.raises(SampleReadError, match=r"frame 5 of .*cannot decode .*frame_0000000006\.jpg"):
        FrameFolderReader(TEMPLATE).read(folder, [0, 5])


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "video")
    small = torch.zeros(3, HEIGHT // 2, WIDTH // 2, dtype=torch.uint8)
    write_file(str(folder / TEMPLATE.format(3)), encode_jpeg(small))
    with _raises_naming(folder, "differ in size"):
        FrameFolderReader(TEMPLATE).read(folder, [0, 2])


def test_missing_video(tmp_path: Path) -> None:
    with _raises_naming(tmp_path / "absent.mp4", "does not exist"):
        VideoFileReader().read(tmp_path / "absent.mp4", [0])


def _corrupt(path: Path, source: Path, kind: str) -> Path:
    content = source.read_bytes()
    path.write_bytes({"empty": b"", "garbage": bytes(range(256)) * 16, "truncated": content[: len(content) // 2]}[kind])
    return path


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
@pytest.mark.parametrize(
    "codec_suffix", [("libx264", "mp4"), ("mpeg4", "avi"), ("mpeg4", "mkv")], ids=["h264-mp4", "mpeg4-avi", "mpeg4-mkv"]
)
def test_unreadable_video(tmp_path: Path, codec_suffix: tuple[str, str], kind: str) -> None:
    codec, suffix = codec_suffix
    good = write_video(tmp_path / f"good.{suffix}", codec)
    bad = _corrupt(tmp_path / f"bad.{suffix}", good, kind)
    with _raises_naming(bad):
        VideoFileReader().read(bad, [0, 10, NUM_FRAMES - 1])


@pytest.mark.parametrize("codec_suffix", [("libx264", "mp4"), ("mpeg4", "mkv")], ids=["h264-mp4", "mpeg4-mkv"])
def test_video_without_frames(tmp_path: Path, codec_suffix: tuple[str, str]) -> None:
    codec, suffix = codec_suffix
    empty = write_video(tmp_path / f"no_frames.{suffix}", codec, num_frames=0)
    assert empty.stat().st_size > 0  # a valid header with a video stream, but no frame
    with _raises_naming(empty):
        VideoFileReader().read(empty, [0])


@pytest.mark.parametrize("indices", [[NUM_FRAMES], [3, NUM_FRAMES + 100]])
def test_index_past_the_end(video_path: Path, indices: Sequence[int]) -> None:
    with _raises_naming(video_path, f"frame {indices[-1]}", f"ended at frame {NUM_FRAMES - 1}", "shorter than"):
        VideoFileReader().read(video_path, indices)


@pytest.mark.parametrize("reader", [FrameFolderReader(TEMPLATE), VideoFileReader()], ids=["frames", "video"])
@pytest.mark.parametrize("indices", [[], [-1, 2]], ids=["none", "negative"])
def test_invalid_indices(
    frame_folder: Path, tmp_path: Path, reader: FrameFolderReader | VideoFileReader, indices: list[int]
) -> None:
    source = frame_folder if isinstance(reader, FrameFolderReader) else write_video(tmp_path / "v.mp4", "libx264")
    with pytest.raises(ValueError, match="indices|no frame"):
        reader.read(source, indices)


def test_seeking_in_mpeg_ts_falls_back_to_the_very_start(tmp_path: Path) -> None:
    """MPEG-TS seeks by timestamp inexactly: a seek to the first frame's timestamp can land on
    a later key frame, so the fallback goes back to the start of the file."""
    path = write_video(tmp_path / "clip.ts", "libx264", num_frames=NUM_FRAMES)
    for index in range(NUM_FRAMES):
        assert identify(VideoFileReader().read(path, [index])) == [index]
    assert torch.equal(VideoFileReader().read(path, list(range(NUM_FRAMES))),
                       VideoFileReader(seek=False).read(path, list(range(NUM_FRAMES))))


def cut_without_reencoding(source: Path, path: Path, hidden: int) -> Path:
    """``source`` with its first ``hidden`` frames' timestamps moved before zero, as a cut with
    ``ffmpeg -ss ... -c copy`` leaves them: MP4 keeps their packets behind an edit list."""
    with av.open(str(source)) as original, av.open(str(path), "w") as cut:
        stream_in = original.streams.video[0]
        stream_out = cut.add_stream_from_template(stream_in)
        shift = hidden * round(1 / (stream_in.time_base * FPS))
        for packet in original.demux(stream_in):
            if packet.dts is None:
                continue
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
            packet.stream = stream_out
            cut.mux(packet)
    return path


@pytest.mark.parametrize("exact", [False, True], ids=["header", "demuxed"])
def test_frames_an_edit_list_hides_are_not_counted(tmp_path: Path, exact: bool) -> None:
    source = write_video(tmp_path / "source.mp4", "libx264")
    cut = cut_without_reencoding(source, tmp_path / "cut.mp4", hidden=KEYFRAME_INTERVAL // 2)
    with av.open(str(cut)) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    assert decodable == NUM_FRAMES - KEYFRAME_INTERVAL // 2
    assert count_video_frames(cut, exact=exact) == decodable
    last = VideoFileReader().read(cut, [decodable - 1])
    assert identify(last) == [NUM_FRAMES - 1]


@pytest.mark.parametrize(
    ("fps", "expected"),
    [(None, [0, 1, 5, 19]), (FPS, [0, 1, 5, 19]), (FPS * (1 + 1e-9), [0, 1, 5, 19]),  # the same rate
     (FPS * 1.0005, [0, 0, 4, 18]),  # 30.015 fps: NTSC-like drift is read by time too
     (FPS / 2, [0, 2, 10, 38]), (FPS * 2, [0, 0, 2, 9]), (FPS * 1.5, [0, 0, 3, 12])],
)
def test_indices_counted_at_another_rate_are_read_by_time(video_path: Path, fps: float | None,
                                                        expected: list[int]) -> None:
    """Index i at ``fps`` is the stream's frame on screen at i / fps (a copy of a video at
    another rate than its annotations count at)."""
    assert identify(VideoFileReader().read(video_path, [0, 1, 5, 19], fps=fps)) == expected


@pytest.mark.parametrize(("codec", "suffix"), [("libvpx-vp9", "webm"), ("mpeg4", "mkv")])
def test_a_truncated_video_counted_short_is_warned_about(tmp_path: Path, codec: str, suffix: str, caplog) -> None:
    """Matroska / WebM give no frame count, so frames are demuxed: a file cut short demuxes fewer
    frames than its duration implies, and the count says so instead of passing silently."""
    whole = write_video(tmp_path / f"whole.{suffix}", codec, num_frames=NUM_FRAMES)
    with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
        assert count_video_frames(whole) == NUM_FRAMES
    assert not caplog.records
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
        frames = count_video_frames(cut)
    assert frames < NUM_FRAMES - 2
    assert re.search(rf"cut.{suffix}: {frames} frames demuxed, where its duration implies \d+: truncated", caplog.text)
