"""Frame-folder and PyAV readers on tiny videos whose frames encode their own index in colour.

Lossy codecs change pixel values a little, so a frame is identified by its colour (steps of 32
levels, far above the codec's error) rather than compared to the original exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
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
                options: dict[str, str] | None = None, timestamps: Sequence[int] | None = None,
                container_options: dict[str, str] | None = None) -> Path:
    """Frames 0..num_frames-1 at 30 fps from ``first_pts``; ``timestamps`` gives frame i the
    timestamp ``timestamps[i]`` (in frames) instead (a variable rate, dropped frames)."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        # Key frames only every KEYFRAME_INTERVAL frames: no extra ones at the colour changes.
        no_scene_cuts = "0" if codec == "libx264" else "1000000000"  # x264 and FFmpeg disagree on the scale
        stream.options = {"g": str(KEYFRAME_INTERVAL), "sc_threshold": no_scene_cuts, **(options or {})}
        container.start_encoding()  # write the header even when no frame follows
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index), format="rgb24")
            pts = first_pts + index if timestamps is None else timestamps[index]
            frame.pts, frame.time_base = pts, Fraction(1, FPS)
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
# non-zero first timestamp; AVI has no presentation timestamps (FFmpeg numbers frames in
# decoding order, which B-frames permute: H.264's by x264's defaults, MPEG-4's when asked);
# Something-Something v2 ships VP9 in WebM.
VIDEO_FORMATS = [
    ("libvpx-vp9", "webm", 0, 0),
    ("libx264", "mp4", 0, 0),
    ("mpeg4", "avi", 0, 0),
    ("mpeg4", "avi", 0, 3),
    ("libx264", "avi", 0, 0),
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
    # AVI with B-frames numbers frames in decoding order, not by timestamps: it is decoded
    # from the start.
    with av.open(str(video_path)) as container:
        by_output_order = video._StreamTiming.of(container, container.streams.video[0], video_path).by_output_order
    keys = [0] if by_output_order else key_frames(video_path)
    if not by_output_order:
        assert keys == list(range(0, NUM_FRAMES, KEYFRAME_INTERVAL))
    for first in range(1, NUM_FRAMES - 1):
        passes.clear()
        assert identify(VideoFileReader().read(video_path, [first + 1, first])) == [first + 1, first]
        # One pass, from the last key frame at or before the first wanted frame to the last one.
        expected = (max(k for k in keys if k <= first), first + 1)
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
def test_decoder_threading_does_not_change_frames(video_path: Path, threads: int, thread_type: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    indices = [2, 13, 14, 30]
    reference = VideoFileReader(threads=1, thread_type="NONE").read(video_path, indices)
    decoder_settings = []  # (the stream's, as its timing is read: before the first frame is decoded)
    timing_of = video._StreamTiming.of

    def recording_timing_of(container, stream, source):
        decoder_settings.append((stream.thread_count, stream.thread_type.name))
        return timing_of(container, stream, source)

    monkeypatch.setattr(video._StreamTiming, "of", recording_timing_of)
    assert torch.equal(VideoFileReader(threads=threads, thread_type=thread_type).read(video_path, indices), reference)
    assert decoder_settings == [(threads, thread_type)]


def test_a_negative_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="threads must be >= 0, got -1"):
        VideoFileReader(threads=-1)


@pytest.mark.parametrize("indices", [[5, 8], [5, 35]], ids=["past_every_wanted_frame", "between_wanted_frames"])
def test_seek_overshoot_falls_back_to_decoding_from_the_start(
    video_path: Path, monkeypatch: pytest.MonkeyPatch, indices: list[int]
) -> None:
    # Pretend the container's index is wrong: every seek asks for a timestamp 30 frames too late
    # (landing past frame 5, and with [5, 35] before the last wanted frame: a seek that must still
    # count as an overshoot, since frame 5 is behind it).
    original = video._StreamTiming.pts_of
    monkeypatch.setattr(video._StreamTiming, "pts_of", lambda self, index: original(self, index + 30))
    assert identify(VideoFileReader().read(video_path, indices)) == indices


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


@pytest.mark.parametrize("read", [lambda path: VideoFileReader().read(path, [0]), count_video_frames],
                         ids=["read", "count"])
def test_missing_video_or_a_folder_in_its_place(tmp_path: Path, read) -> None:
    with _raises_naming(tmp_path / "absent.mp4", "does not exist"):
        read(tmp_path / "absent.mp4")
    (tmp_path / "folder.mp4").mkdir()
    with _raises_naming(tmp_path / "folder.mp4", "is a folder"):
        read(tmp_path / "folder.mp4")


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


@pytest.mark.parametrize("hidden", [1, 2, KEYFRAME_INTERVAL // 2])
@pytest.mark.parametrize("exact", [False, True], ids=["header", "demuxed"])
def test_frames_an_edit_list_hides_are_not_counted(tmp_path: Path, exact: bool, hidden: int) -> None:
    """One hidden frame leaves the duration a whole frame short of the header's count, which
    must not pass for rounding."""
    source = write_video(tmp_path / "source.mp4", "libx264")
    cut = cut_without_reencoding(source, tmp_path / "cut.mp4", hidden=hidden)
    with av.open(str(cut)) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    assert decodable == NUM_FRAMES - hidden
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


@pytest.mark.parametrize("bframes", ["0", "3"])
def test_a_truncated_mp4_with_its_index_first_is_not_counted_by_its_header(tmp_path: Path, bframes: str,
                                                                           caplog, monkeypatch) -> None:
    """``faststart`` puts the index before the data: cut short, the file keeps a header that
    counts every frame, so the count checks that the last frame's packet is in the file. A
    whole file is still counted from its header, B-frames or not (no demuxing)."""
    whole = write_video(tmp_path / "whole.mp4", "libx264", options={"bf": bframes},
                        container_options={"movflags": "faststart"})
    with monkeypatch.context() as patch:
        patch.setattr(video, "_demuxed_frame_count", lambda *_: pytest.fail("demuxed a whole file"))
        with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
            assert count_video_frames(whole) == NUM_FRAMES
    assert not caplog.records
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == NUM_FRAMES  # (the case this test is about)
    with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
        frames = count_video_frames(cut)
    assert frames < NUM_FRAMES - 2
    assert re.search(rf"cut.mp4: {frames} frames demuxed, where its duration implies {NUM_FRAMES}: truncated", caplog.text)


@pytest.mark.parametrize("bframes", ["0", "3"])
@pytest.mark.parametrize("fraction", [7, 8, 9])  # (tenths kept: less, and no frame is whole)
def test_a_truncated_mp4_reads_every_frame_it_counts(tmp_path: Path, bframes: str, fraction: int) -> None:
    """A download cut short ends in a packet cut in two, which the demuxer flags corrupt: the
    count leaves it out, and a read that reaches the end skips it and still returns the frames
    decoded before it, those the decoder holds back for B-frames included (the count took the
    cut packet's timestamp, and decoding stopped at the packet: every sample that reached the
    end failed)."""
    whole = write_video(tmp_path / "whole.mp4", "libx264", options={"bf": bframes},
                        container_options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * fraction // 10])
    count = count_video_frames(cut)
    assert 0 < count < NUM_FRAMES
    reader = VideoFileReader()
    assert identify(reader.read(cut, list(range(count)))) == list(range(count))
    assert identify(reader.read(cut, [count - 1])) == [count - 1]  # (after a seek)
    with pytest.raises(SampleReadError, match=rf"cut.mp4: frame {count} requested but decoding ended"):
        reader.read(cut, [count])


@pytest.mark.parametrize("missing", [1, 2, 3])
def test_an_mp4_missing_its_last_frames_is_counted_without_them(tmp_path: Path, missing: int, caplog) -> None:
    """Cut right before the packet of frame ``NUM_FRAMES - missing`` (no B-frames: packets in
    display order), a ``faststart`` file still counts every frame in its header: the count is
    of the frames in the file, and from 3 missing (more than rounding explains) it warns."""
    whole = write_video(tmp_path / "whole.mp4", "libx264", options={"bf": "0"},
                        container_options={"movflags": "faststart"})
    with av.open(str(whole)) as container:
        positions = [packet.pos for packet in container.demux(container.streams.video[0]) if packet.size]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: positions[NUM_FRAMES - missing]])
    with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
        count = count_video_frames(cut)
    assert count == NUM_FRAMES - missing
    assert ("truncated?" in caplog.text) == (missing >= 3), caplog.text
    assert identify(VideoFileReader().read(cut, [count - 1])) == [count - 1]


def test_a_matroska_video_whose_sound_runs_longer_is_not_taken_for_truncated(tmp_path: Path, caplog) -> None:
    """Matroska gives no stream durations, only the container's, the longest track's: a clip
    whose sound goes on after its last frame (a Kinetics download) does not look cut short."""
    path = tmp_path / "with_sound.mkv"
    with av.open(str(path), "w") as container:
        picture = container.add_stream("mpeg4", rate=FPS)
        picture.width, picture.height, picture.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = container.add_stream("pcm_s16le", rate=8000)
        sound.layout = "mono"
        for index in range(NUM_FRAMES):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(picture.encode(frame))
        container.mux(picture.encode())
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 3 * 8000), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode())
    with av.open(str(path)) as container:
        assert container.duration / av.time_base > 2 * NUM_FRAMES / FPS  # (three seconds of sound)
    with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
        assert count_video_frames(path) == NUM_FRAMES
    assert caplog.text == ""
    assert identify(VideoFileReader().read(path, [0, NUM_FRAMES - 1])) == [0, NUM_FRAMES - 1]


def remux(source: Path, path: Path, change: Callable[[int, av.Packet], None]) -> Path:
    """``source``'s video packets in a new file of ``path``'s format, ``change(k, packet)``
    applied to the k-th packet first."""
    with av.open(str(source)) as original, av.open(str(path), "w") as copy:
        stream_in = original.streams.video[0]
        stream_out = copy.add_stream_from_template(stream_in)
        for k, packet in enumerate(p for p in original.demux(stream_in) if p.dts is not None):
            change(k, packet)
            packet.stream = stream_out
            copy.mux(packet)
    return path


def test_a_last_frame_held_longer_does_not_shift_the_indices(tmp_path: Path) -> None:
    """A last frame shown for two frame periods lowers the stream's average rate (frames over
    duration, 1200/41 here); indices come from the rate its timestamps step at."""
    source = write_video(tmp_path / "source.mp4", "libx264", options={"bf": "0"})
    unit = round(1 / (Fraction(1, 15360) * FPS))  # MP4's time base for 30 fps: 1/15360
    held = remux(source, tmp_path / "held.mp4",
                 lambda k, packet: setattr(packet, "duration", unit * (2 if k == NUM_FRAMES - 1 else 1)))
    with av.open(str(held)) as container:
        assert container.streams.video[0].average_rate != FPS  # (the case this test is about)
    assert count_video_frames(held) == count_video_frames(held, exact=True) == NUM_FRAMES
    assert identify(VideoFileReader().read(held, list(range(NUM_FRAMES)))) == list(range(NUM_FRAMES))


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_frames_missing_from_the_timestamps_are_the_frames_on_screen(tmp_path: Path, suffix: str) -> None:
    """Dropped frames and a rate that halves: index i is the frame shown at i / 30 s, as in a
    constant-rate copy, and the count runs to the last frame's index."""
    dropped = [i for i in range(NUM_FRAMES + 3) if i not in (9, 20, 21)]  # 40 frames over 43 slots
    halving = [i for i in range(20)] + [20 + 2 * i for i in range(20)]  # 30 fps, then 15 fps
    for name, timestamps in (("dropped", dropped), ("halving", halving)):
        path = write_video(tmp_path / f"{name}.{suffix}", "libx264", options={"bf": "0"}, timestamps=timestamps)
        slots = timestamps[-1] + 1
        assert count_video_frames(path) == count_video_frames(path, exact=True) == slots
        on_screen = [max(k for k, pts in enumerate(timestamps) if pts <= i) for i in range(slots)]
        assert identify(VideoFileReader().read(path, list(range(slots)))) == on_screen
        for i in range(0, slots, 3):  # one by one, seeking
            assert identify(VideoFileReader().read(path, [i])) == [on_screen[i]]


def test_a_long_run_without_frames_is_read_with_one_warning(tmp_path: Path, caplog, monkeypatch) -> None:
    """A second without decodable frames (a damaged stretch, which the decoder skips) is read
    as the frame shown before it, as for a variable rate, but said once per file; a gap of a few
    frames (dropped frames) is not."""
    monkeypatch.setattr(video, "_warned_of_stale_frames", set())
    gap = [i for i in range(10)] + [i + 30 for i in range(10, NUM_FRAMES)]  # frames 10-39 missing
    short_gap = [i for i in range(NUM_FRAMES + 3) if i not in (9, 20, 21)]
    damaged = write_video(tmp_path / "damaged.mp4", "libx264", options={"bf": "0"}, timestamps=gap)
    dropped = write_video(tmp_path / "dropped.mp4", "libx264", options={"bf": "0"}, timestamps=short_gap)
    with caplog.at_level(logging.WARNING, logger="lightning_gsf.data.video"):
        assert identify(VideoFileReader().read(dropped, list(range(43)))) == [
            max(k for k, pts in enumerate(short_gap) if pts <= i) for i in range(43)]
        assert identify(VideoFileReader().read(damaged, [5, 25, 35])) == [5, 9, 9]
        assert identify(VideoFileReader().read(damaged, [30])) == [9]  # (said once)
        assert identify(VideoFileReader().read(damaged, [20])) == [9]  # (within half a second of frame 9: not said)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{damaged}: no frame decodes between frame 9 and frame 40 (1.0 s at 30 fps): frame 25 is frame 9's image; "
        "a damaged stretch of the video? (check the file, or re-encode it; said once per file)"]


def test_a_short_matroska_file_without_a_start_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg gives a few-frame H.264 Matroska file that starts late no start time: its first
    frame's timestamp is found by decoding it (the frames used to be unreachable). That is done
    once per file and process, kept by path, modification time and size, for so many files: a
    file written again under the same name is timed again, and the oldest file is forgotten."""
    monkeypatch.setattr(video, "_FIRST_PTS_KEPT", 2)
    monkeypatch.setattr(video, "_FIRST_PTS", {})
    path = tmp_path / "short.mkv"
    for first_pts, num_frames in [(15, 5), (40, 6)]:
        write_video(path, "libx264", first_pts=first_pts, num_frames=num_frames,
                    options={"bf": "0", "tune": "zerolatency"})
        with av.open(str(path)) as container:
            assert container.streams.video[0].start_time is None  # (the case this test is about)
        assert identify(VideoFileReader().read(path, [0, 2, 4])) == [0, 2, 4]
    second_writing = (str(path), path.stat().st_mtime_ns, path.stat().st_size)
    other = write_video(tmp_path / "other.mkv", "libx264", first_pts=9, num_frames=5,
                        options={"bf": "0", "tune": "zerolatency"})
    assert identify(VideoFileReader().read(other, [1])) == [1]
    assert list(video._FIRST_PTS) == [second_writing, (str(other), other.stat().st_mtime_ns, other.stat().st_size)]


@pytest.mark.parametrize("suffix", ["mkv", "webm"])
def test_a_late_first_frame_is_not_taken_for_truncation(tmp_path: Path, suffix: str, caplog) -> None:
    """Matroska's duration is the time the last frame ends at: 20 frame periods for 5 frames
    from frame 15 on, which is not 15 frames missing."""
    codec = "libvpx-vp9" if suffix == "webm" else "libx264"
    path = write_video(tmp_path / f"late.{suffix}", codec, first_pts=15, num_frames=5)
    with caplog.at_level("WARNING", logger="lightning_gsf.data.video"):
        assert count_video_frames(path) == 5
    assert not caplog.records


def test_metadata_that_is_not_utf8_does_not_stop_the_read(tmp_path: Path) -> None:
    """A Latin-1 title (FFmpeg's strict UTF-8 decoding raised UnicodeDecodeError, naming no file)."""
    source = write_video(tmp_path / "source.mkv", "libx264")
    titled = tmp_path / "titled.mkv"
    with av.open(str(source)) as original, av.open(str(titled), "w") as copy:
        copy.metadata["title"] = "CAFE_TITLE"
        stream_out = copy.add_stream_from_template(original.streams.video[0])
        for packet in original.demux(video=0):
            if packet.size > 0:
                packet.stream = stream_out
                copy.mux(packet)
    data = titled.read_bytes()
    assert data.count(b"CAFE_TITLE") == 1
    path = tmp_path / "latin1.mkv"
    path.write_bytes(data.replace(b"CAFE_TITLE", "Café_TITLE".encode("latin-1")))  # (same length)
    assert count_video_frames(path) == NUM_FRAMES
    assert identify(VideoFileReader().read(path, [0, 39])) == [0, 39]


def test_a_still_picture_track_is_not_the_video(tmp_path: Path) -> None:
    """A still picture muxed as the first video stream (a cover picture: Matroska keeps no flag
    saying so): the reader takes the real video (it read the picture for every index)."""
    source = write_video(tmp_path / "source.mp4", "libx264")
    path = tmp_path / "with_cover.mkv"
    with av.open(str(source)) as original, av.open(str(path), "w") as copy:
        cover = copy.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
        stream_in = original.streams.video[0]
        stream_out = copy.add_stream_from_template(stream_in)
        copy.start_encoding()
        picture = av.VideoFrame.from_ndarray(frame_pixels(63), format="rgb24").reformat(format="yuvj420p")
        picture.pts = 0
        for packet in [*cover.encode(picture), *cover.encode()]:
            copy.mux(packet)
        for packet in original.demux(stream_in):
            if packet.dts is not None:
                packet.stream = stream_out
                copy.mux(packet)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 2  # (the case this test is about)
    assert count_video_frames(path) == NUM_FRAMES
    assert identify(VideoFileReader().read(path, [0, 5, 39])) == [0, 5, 39]


def test_an_overshooting_seek_steps_back_before_decoding_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a seek lands after the first wanted frame, the reader seeks again further back
    (``_SEEK_BACK_FRAMES``, then 4x as far each time) rather than decoding the whole video."""
    path = write_video(tmp_path / "clip.mp4", "libx264", options={"bf": "0"})
    original = video._StreamTiming.pts_of
    asked: list[int] = []

    def pts_of_too_late_at_first(self: video._StreamTiming, index: int) -> int:
        asked.append(index)  # (the first seek aims 10 frames late, at key frame 30)
        return original(self, index + (KEYFRAME_INTERVAL if len(asked) == 1 else 0))

    monkeypatch.setattr(video._StreamTiming, "pts_of", pts_of_too_late_at_first)
    monkeypatch.setattr(video, "_SEEK_BACK_FRAMES", 10)
    passes: list[video._Decoded] = []
    decode_until = video._decode_until
    monkeypatch.setattr(video, "_decode_until", lambda *args: passes.append(decode_until(*args)) or passes[-1])
    assert identify(VideoFileReader().read(path, [25, 28])) == [25, 28]
    assert asked == [25, 15]
    assert [(p.first_seen, p.last_seen) for p in passes] == [(30, None), (10, 28)]


def test_seeks_that_keep_overshooting_step_back_further_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every seek aims 20 frames late (key frame 40 for frames 35 and 25): the reader steps
    back 10, then 40 frames (past the start), then decodes from the start, rather than
    retrying the same target forever (a hung loader worker)."""
    path = write_video(tmp_path / "clip.mp4", "libx264", num_frames=60, options={"bf": "0"})
    original = video._StreamTiming.pts_of
    asked: list[int] = []

    def pts_of_far_too_late(self: video._StreamTiming, index: int) -> int:
        asked.append(index)
        assert len(asked) <= 5, f"the seeks do not step further back: {asked}"
        return original(self, index + 20)

    monkeypatch.setattr(video._StreamTiming, "pts_of", pts_of_far_too_late)
    monkeypatch.setattr(video, "_SEEK_BACK_FRAMES", 10)
    assert identify(VideoFileReader().read(path, [35, 37])) == [35, 37]
    assert asked == [35, 25]


@pytest.mark.parametrize(("renumber", "indices"), [(lambda index: 9 - index % 10, [9, 12]),
                                                   (lambda index: {3: 4, 4: 3}.get(index, index), [2, 12])],
                         ids=["far_back", "one_back"])
def test_timestamps_that_go_backwards_are_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renumber, indices: list[int]
) -> None:
    """Frames shown out of order, far back or by a single frame (0, 1, 2, 4, 3): an error, not a
    frame taken for another (a repeated number, a duplicate frame, is skipped instead)."""
    path = write_video(tmp_path / "clip.mp4", "libx264")
    original = video._StreamTiming.index_of
    monkeypatch.setattr(video._StreamTiming, "index_of", lambda self, frame: renumber(original(self, frame)))
    with _raises_naming(path, "timestamps go backwards"):
        VideoFileReader(seek=False).read(path, indices)


@pytest.mark.parametrize(("codec", "options", "by_output_order"), [
    ("mpeg4", None, False), ("mpeg4", {"bf": "3", "qscale": "1"}, True),
    ("libx264", None, True), ("libx264", {"bf": "0"}, False),  # (x264 without B-frames numbers from 1)
])
def test_avi_is_read_by_its_numbers_unless_b_frames_permute_them(tmp_path: Path, codec: str, options, by_output_order):
    path = write_video(tmp_path / "clip.avi", codec, options=options)
    with av.open(str(path)) as container:
        assert video._StreamTiming.of(container, container.streams.video[0], path).by_output_order == by_output_order
    assert count_video_frames(path) == count_video_frames(path, exact=True) == NUM_FRAMES
    indices = [0, 7, 8, 21, 39, 3]
    assert identify(VideoFileReader().read(path, indices)) == indices


def test_dropped_frames_in_avi_are_the_frames_on_screen(tmp_path: Path) -> None:
    """AVI keeps a dropped frame as an empty chunk: without B-frames its frames are numbered by
    their chunks, so the count and the reader see the gap as the other formats do."""
    timestamps = [i for i in range(NUM_FRAMES + 3) if i not in (9, 20, 21)]
    path = write_video(tmp_path / "dropped.avi", "mpeg4", timestamps=timestamps)
    slots = timestamps[-1] + 1
    assert count_video_frames(path) == count_video_frames(path, exact=True) == slots
    on_screen = [max(k for k, pts in enumerate(timestamps) if pts <= i) for i in range(slots)]
    assert identify(VideoFileReader().read(path, list(range(slots)))) == on_screen


def test_a_repeated_frame_number_is_skipped_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame whose timestamp gives the previous frame's number (a brief rate above the nominal
    one) is skipped; only a number below the last one seen is timestamps going backwards."""
    path = write_video(tmp_path / "clip.mp4", "libx264")
    original = video._StreamTiming.index_of

    def frame_4_numbered_3(self, frame):
        index = original(self, frame)
        return 3 if index == 4 else index

    monkeypatch.setattr(video._StreamTiming, "index_of", frame_4_numbered_3)
    assert identify(VideoFileReader(seek=False).read(path, [2, 3, 4, 5, 39])) == [2, 3, 3, 5, 39]


def test_the_end_check_reads_at_most_4_end_frames_of_packets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seek for the last frames that lands far back (an inexact index; here the file's start)
    reads a bounded number of packets, not the rest of a long video."""
    monkeypatch.setattr(video, "_END_FRAMES", 4)
    path = write_video(tmp_path / "long.mp4", "libx264", num_frames=60, options={"bf": "0"})
    demuxed = []

    class SeeksToTheStart:  # (a container whose index is inexact)
        def __init__(self, container):
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def seek(self, offset, **kwargs):
            self.container.seek(0)

        def demux(self, *streams):
            for packet in self.container.demux(*streams):
                demuxed.append(packet)
                yield packet

    with av.open(str(path)) as container:
        assert not video._last_frame_is_in_the_file(SeeksToTheStart(container), container.streams.video[0])
    assert len(demuxed) == 4 * 4 + 1


def test_a_corrupt_packet_before_the_last_is_decoded(tmp_path: Path) -> None:
    """A packet flagged corrupt in the middle of a file is decoded (dropping it would lose the
    frames that depend on it: 31 of 40 came back)."""
    path = write_video(tmp_path / "clip.mp4", "libx264", options={"bf": "0"})

    class Corrupt:
        is_corrupt = True

        def __init__(self, packet):
            self.packet = packet

        def __getattr__(self, name):
            return getattr(self.packet, name)

    class TwentiethPacketCorrupt:
        def __init__(self, container):
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def demux(self, *streams):
            for number, packet in enumerate(self.container.demux(*streams)):
                yield Corrupt(packet) if number == 20 else packet

    with av.open(str(path)) as container:
        frames = list(video._decoded_frames(TwentiethPacketCorrupt(container), container.streams.video[0]))
    assert len(frames) == NUM_FRAMES
