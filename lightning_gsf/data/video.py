"""Readers that turn a sample's source (a folder of JPEG frames or a video file) into a clip.

Both readers share one interface, ``read(source, indices, fps=None) -> uint8 (T, 3, H, W)``
RGB, with 0-based frame indices (counted at ``fps`` when the annotations give a rate: a video
at another rate is read by time). Repeated indices are allowed (short segments repeat frames) and the
output follows the order of ``indices``; each distinct frame is decoded only once.

Choices, and why:

- Frame folders are decoded with ``torchvision.io.decode_jpeg`` on the bytes of
  ``torchvision.io.read_file``: libjpeg-turbo straight into a CHW uint8 tensor, with no PIL
  image and no HWC -> CHW copy.
- Videos are decoded with PyAV. A clip needs a handful of frames spread over a segment that may
  sit minutes into a long video, so the reader seeks (by timestamp) to the key frame at or
  before the first frame it needs, and decodes only up to the last one. Decoding from the
  start would cost time proportional to the segment's position in the video.
- A decoded frame's index is computed from its timestamp, ``round((pts - start_pts) *
  time_base * fps)``, not by counting frames, because counting is impossible after a seek and
  because many videos do not start at ``pts = 0``. ``fps`` is FFmpeg's guess of the stream's
  rate (its timestamps' rate), not the average rate, which a last frame held longer than the
  others lowers. Frame ``i`` is the frame on screen at index ``i``: where a variable rate or a
  dropped frame leaves no frame at ``i``, the frame shown before it stands in, as in a
  constant-rate copy of the video (a stand-in more than half a second older, more likely a
  damaged stretch that the decoder skipped, is logged as a warning, once per file);
  :func:`count_video_frames` counts the same way. If a seek
  lands after the first needed frame (a container with a sparse or inexact index), the reader
  seeks again further back, then, failing that, decodes from the start.
- AVI stores no presentation timestamps: FFmpeg numbers its frames in decoding order. Without
  B-frames that is the display order (counted from the first frame shown, which can be
  numbered 1); with B-frames, which permute the numbers, frames are numbered in the order the
  decoder shows them, decoding from the start of the file every time (slower on long AVIs; the
  datasets here ship MP4 and WebM), and a dropped frame is not accounted for.
- Measured on a 256 x 456 H.264 video with the default 250-frame GOP (8 frames per clip from
  segments of 30 to 200 frames, shared 2-core CPU): seeking cut the time per clip from about
  300 to 120-135 ms, and the CPU time from about 200 to 100-115 ms. The decoder's threading
  modes (``AUTO``, ``FRAME``, ``SLICE``, none) were within the noise of that machine; threading
  helps a single process on a many-core machine, while a DataLoader with one worker per core
  already keeps the cores busy (use ``threads=1`` there to avoid oversubscription).
- JPEG frames: ``decode_jpeg`` took 0.4-0.6 ms per 256 x 456 frame against 0.65-0.8 ms for
  PIL + NumPy, with identical pixels. torchvision 0.29 deprecates its image codecs in favour of
  TorchCodec (a ``DeprecationWarning`` per call); moving to ``torchcodec.decoders.decode_jpeg``
  is a one-line change once that package is a dependency.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from lightning_gsf.data.errors import SampleReadError

__all__ = ["ClipReader", "FrameFolderReader", "VideoFileReader", "count_video_frames"]

logger = logging.getLogger(__name__)


class ClipReader(Protocol):
    """What a dataset needs from a reader."""

    def read(self, source: Path, indices: Sequence[int], fps: float | None = None) -> torch.Tensor:
        """Return the frames ``indices`` of ``source`` as a uint8 ``(T, 3, H, W)`` RGB tensor.

        ``fps``: the frame rate the indices count at, where the annotations say (EPIC's video
        information); None counts the source's own frames.
        """
        ...


def _distinct_sorted(indices: Sequence[int], source: Path) -> list[int]:
    if len(indices) == 0:
        raise ValueError(f"no frame indices requested from {source}")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)} for {source}")
    return sorted(set(indices))


def _gather(frames: dict[int, torch.Tensor], indices: Sequence[int], source: Path) -> torch.Tensor:
    """Stack the decoded frames in the order of ``indices``, checking that their sizes agree."""
    shapes = {tuple(frame.shape) for frame in frames.values()}
    if len(shapes) > 1:
        raise SampleReadError(f"{source}: frames differ in size {sorted(shapes)}; expected one size (3, H, W)")
    return torch.stack([frames[i] for i in indices])


class FrameFolderReader:
    """Reads JPEG frames from a folder, frame ``i`` being the file ``template.format(i + first_index)``.

    Args:
        template: file name of a frame, formatted with its (offset) number.
        first_index: number of the file holding frame 0 (EPIC-KITCHENS and the original
            release's extracted frames count from 1).
    """

    def __init__(self, template: str = "frame_{:010d}.jpg", first_index: int = 1) -> None:
        self.template = template
        self.first_index = first_index

    def frame_path(self, source: Path, index: int) -> Path:
        return Path(source) / self.template.format(index + self.first_index)

    def read(self, source: Path, indices: Sequence[int], fps: float | None = None) -> torch.Tensor:
        """The frames ``indices``; ``fps`` is not used (a folder's frames are numbered at the rate
        they were extracted at, which is the rate its annotations count at)."""
        source = Path(source)
        if not source.is_dir():
            raise SampleReadError(f"frame folder {source} does not exist or is not a directory")
        frames = {index: self._read_frame(source, index) for index in _distinct_sorted(indices, source)}
        return _gather(frames, indices, source)

    def _read_frame(self, source: Path, index: int) -> torch.Tensor:
        path = self.frame_path(source, index)
        if not path.is_file():
            raise SampleReadError(f"frame {index} of {source}: missing file {path}")
        try:
            frame = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise SampleReadError(f"frame {index} of {source}: cannot decode {path} as a JPEG ({error})") from error
        return frame


class VideoFileReader:
    """Reads frames from a video file with PyAV, seeking near the first needed frame.

    Frame ``i`` is the frame on screen at ``i / fps`` seconds after the stream's first
    timestamp, with ``fps`` the stream's (guessed) rate. For constant-frame-rate videos (what the
    datasets' preprocessing produces) this is the i-th frame; in a variable-rate video or one
    with dropped frames it is the frame a constant-rate copy would hold there. AVI frames with
    B-frames are numbered in the order they are shown, decoding from the start (see the module
    doc). Indices
    counted at another rate (``read(..., fps=...)``, the rate of the annotations) are read by
    time too: index ``i`` is the stream's frame on screen at ``i / fps``.

    Args:
        threads: decoder threads; 0 lets FFmpeg choose (one per core). Use 1 to decode in the
            calling thread only, e.g. with one DataLoader worker per core.
        thread_type: FFmpeg's threading mode, ``"AUTO"`` (frame and slice threading where the
            codec supports them), ``"FRAME"``, ``"SLICE"`` or ``"NONE"``.
        seek: seek to the key frame before the first needed frame (not in AVI with B-frames). ``False``
            decodes from the start of the video every time; it exists as the reference the
            seeking path is tested against.
    """

    def __init__(self, threads: int = 0, thread_type: str = "AUTO", seek: bool = True) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.threads = threads
        self.thread_type = thread_type
        self.seek = seek

    def read(self, source: Path, indices: Sequence[int], fps: float | None = None) -> torch.Tensor:
        source = Path(source)
        _distinct_sorted(indices, source)  # (checks them)
        _check_is_a_file(source)
        try:
            with _open(source) as container:
                stream = _video_stream(container, source)
                stream.thread_type = self.thread_type
                stream.thread_count = self.threads
                timing = _StreamTiming.of(container, stream, source)
                stream_indices = [timing.stream_index(index, fps) for index in indices]
                frames = self._decode(container, stream, timing, source, _distinct_sorted(stream_indices, source))
        except av.FFmpegError as error:
            raise SampleReadError(f"{source}: cannot decode the video ({error})") from error
        return _gather(frames, stream_indices, source)

    def _decode(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        timing: _StreamTiming,
        source: Path,
        wanted: list[int],
    ) -> dict[int, torch.Tensor]:
        if self.seek and not timing.by_output_order:
            # Aim at the first wanted frame, then further back each time a seek lands after it
            # (an index that points at a later key frame, B-frames shown before their key frame).
            target, back = wanted[0], _SEEK_BACK_FRAMES
            while target > 0:
                container.seek(timing.pts_of(target), stream=stream, backward=True, any_frame=False)
                decoded = _decode_until(container, stream, timing, wanted)
                if decoded.first_seen is not None and decoded.first_seen <= wanted[0]:
                    return decoded.check_complete(wanted, source)
                logger.debug("%s: seek to frame %d for frame %d landed on frame %s", source, target, wanted[0],
                             decoded.first_seen)
                target, back = wanted[0] - back, 4 * back
            # Back to the container's very start: a seek to the stream's first timestamp can
            # land on a later key frame in containers whose seeking is inexact (MPEG-TS).
            container.seek(0)
        decoded = _decode_until(container, stream, timing, wanted)
        if decoded.first_seen is not None and decoded.first_seen > wanted[0]:
            raise SampleReadError(
                f"{source}: frame {wanted[0]} cannot be reached: decoding from the start of the file begins at "
                f"frame {decoded.first_seen}"
            )
        return decoded.check_complete(wanted, source)


@dataclass
class _Decoded:
    """The wanted frames found by one decoding pass, and the first and last frame it saw."""

    frames: dict[int, torch.Tensor] = field(default_factory=dict)
    first_seen: int | None = None
    last_seen: int | None = None

    def check_complete(self, wanted: list[int], source: Path) -> dict[int, torch.Tensor]:
        if self.first_seen is None:
            raise SampleReadError(f"{source}: no frame could be decoded; expected frames {wanted[0]}..{wanted[-1]}")
        missing = [index for index in wanted if index not in self.frames]
        if missing:
            raise SampleReadError(
                f"{source}: frame {missing[-1]} requested but decoding ended at frame {self.last_seen} "
                f"({len(missing)} of {len(wanted)} requested frames missing); the video is shorter than "
                f"expected or truncated, or its frame rate varies (re-encode it at a constant rate)"
            )
        return self.frames


def _decode_until(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    timing: _StreamTiming,
    wanted: list[int],
) -> _Decoded:
    """Decode from the container's current position up to the last of the (sorted, distinct)
    ``wanted`` frames. Wanted frame ``i`` is the last decoded frame whose index is at most ``i``
    (the frame on screen at ``i``), so a frame that a variable rate or a dropped frame leaves
    out is stood in for by the one shown before it (with a warning where that one is more than
    ``STALE_STAND_IN_SECONDS`` older: a damaged stretch, more likely); a frame with the index of
    the one before it is not shown (the earlier one is)."""
    decoded = _Decoded()
    shown: torch.Tensor | av.VideoFrame | None = None  # the frame on screen, converted when first wanted
    next_wanted = 0
    for position, frame in enumerate(_decoded_frames(container, stream)):
        index = position if timing.by_output_order else timing.index_of(frame)
        if decoded.first_seen is None:
            decoded.first_seen = index
            if index > wanted[0]:
                break  # the seek overshot; the caller seeks further back
        elif index <= decoded.last_seen:
            if index < decoded.last_seen:
                raise SampleReadError(
                    f"{timing.source}: timestamps go backwards (frame {index} after frame {decoded.last_seen}); "
                    "expected frames in display order (re-encode the video)"
                )
            continue
        while next_wanted < len(wanted) and wanted[next_wanted] < index:  # shown before this frame
            if wanted[next_wanted] - decoded.last_seen > timing.fps * STALE_STAND_IN_SECONDS:
                _warn_of_stale_stand_in(timing, wanted[next_wanted], decoded.last_seen, index)
            shown = _as_tensor(shown)
            decoded.frames[wanted[next_wanted]] = shown
            next_wanted += 1
        decoded.last_seen, shown = index, frame
        if next_wanted < len(wanted) and wanted[next_wanted] == index:
            shown = _as_tensor(shown)
            decoded.frames[index] = shown
            next_wanted += 1
        if next_wanted == len(wanted):
            break
    return decoded


def _decoded_frames(container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """``container.decode(stream)``, except that the last packet is not decoded where the
    demuxer flags it corrupt (a download cut short ends in a packet cut in two): the decoder
    refused it with an error that ended the read, losing the frames decoded before it and those
    held back for B-frames, which the demuxer's final empty packet flushes out instead. (A
    corrupt packet elsewhere is decoded as FFmpeg decodes it.)"""
    held: av.Packet | None = None
    for packet in container.demux(stream):
        if held is not None and not (held.is_corrupt and packet.size == 0):
            yield from held.decode()
        elif held is not None:
            logger.debug("%s: the last packet is cut short (pts %s); not decoded", container.name, held.pts)
        held = packet
    if held is not None:
        yield from held.decode()


# A frame that stands in for one more than this long after it (no frame decoded in between)
# is more likely a damaged stretch of the file, which the decoder skips, than a variable rate.
STALE_STAND_IN_SECONDS = Fraction(1, 2)
_warned_of_stale_frames: set[Path] = set()  # (once per file and process: a file is read every epoch)


def _warn_of_stale_stand_in(timing: _StreamTiming, wanted: int, shown: int, next_decoded: int) -> None:
    """Say, once per file, that frame ``wanted`` is frame ``shown``'s image, no frame having
    been decoded before ``next_decoded``: the read goes on, as for a variable rate."""
    if timing.source in _warned_of_stale_frames:
        return
    _warned_of_stale_frames.add(timing.source)
    logger.warning("%s: no frame decodes between frame %d and frame %d (%.1f s at %.6g fps): frame %d is frame "
                   "%d's image; a damaged stretch of the video? (check the file, or re-encode it; said once per "
                   "file)", timing.source, shown, next_decoded, (next_decoded - shown) / timing.fps,
                   float(timing.fps), wanted, shown)


def _as_tensor(frame: torch.Tensor | av.VideoFrame | None) -> torch.Tensor:
    """A decoded frame as a uint8 ``(3, H, W)`` RGB tensor (converted once)."""
    if isinstance(frame, torch.Tensor):
        return frame
    assert frame is not None  # (the first frame decoded is at or before the first wanted one)
    return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)


# A seek that lands after the first wanted frame is retried this many frames further back, then
# four times as far each time, before decoding from the start.
_SEEK_BACK_FRAMES = 30

# First shown timestamps of streams whose header gives none, by (path, mtime, size): found
# once per file and process (a DataLoader worker reads a video many times), the oldest
# forgotten past this many files.
_FIRST_PTS: dict[tuple[str, int, int], int | None] = {}
_FIRST_PTS_KEPT = 100_000


def _first_shown_pts(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                     source: Path) -> int | None:
    """The timestamp of the first frame the decoder shows, found once per file and process."""
    status = source.stat()
    key = (str(source), status.st_mtime_ns, status.st_size)
    if key not in _FIRST_PTS:
        first = next(_decoded_frames(container, stream), None)
        container.seek(0)
        if len(_FIRST_PTS) >= _FIRST_PTS_KEPT:
            _FIRST_PTS.pop(next(iter(_FIRST_PTS)))
        _FIRST_PTS[key] = None if first is None else first.pts
    return _FIRST_PTS[key]


class _StreamTiming:
    """Conversions between frame indices and a stream's timestamps."""

    def __init__(self, time_base: Fraction, fps: Fraction, start_pts: int, source: Path,
                 by_output_order: bool = False) -> None:
        self.time_base = time_base
        self.fps = fps
        self.start_pts = start_pts
        self.source = source
        self.by_output_order = by_output_order

    @classmethod
    def of(cls, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
           source: Path) -> _StreamTiming:
        """The timing of ``stream``, a video stream of ``container`` (just opened: the first
        time an AVI file, or a stream whose header gives no start time, is read, its first
        frame is decoded, then the container rewound)."""
        fps = _nominal_rate(stream)
        if fps is None or stream.time_base is None:
            raise SampleReadError(f"{source}: the video stream has no frame rate or time base")
        time_base = Fraction(stream.time_base)
        if _numbers_frames_in_decoding_order(container, stream):
            return cls(time_base, fps, 0, source, by_output_order=True)
        start_pts = _first_shown_pts(container, stream, source) if _starts_at_first_frame(container, stream) \
            else stream.start_time
        return cls(time_base, fps, start_pts or 0, source)

    def pts_of(self, index: int) -> int:
        """The last timestamp that still rounds to frame ``index``, the target of a backward seek.

        A backward seek lands on the last key frame at or before the target. Aiming half a frame
        late (rather than at the frame's exact time) keeps a key frame at ``index`` itself in
        reach even when its stored timestamp was rounded up, and cannot reach a later frame.
        """
        return self.start_pts + math.ceil((index + Fraction(1, 2)) / (self.fps * self.time_base)) - 1

    def stream_index(self, index: int, fps: float | None) -> int:
        """The stream's frame on screen when frame ``index`` counted at ``fps`` starts:
        ``floor(index * stream fps / fps)``; ``index`` itself without ``fps`` or when the two rates
        agree to a millionth (59.9400599400599 in a CSV and 60000/1001 in the stream: 1e-15
        apart; a millionth drifts by 0.2 frames over 200,000, an hour at 60 fps)."""
        if fps is None or abs(Fraction(fps) - self.fps) <= self.fps / 1_000_000:
            return index
        if fps <= 0:
            raise ValueError(f"{self.source}: frame rate must be > 0, got {fps}")
        return math.floor(index * self.fps / Fraction(fps))

    def index_of(self, frame: av.VideoFrame) -> int:
        if frame.pts is None:
            raise SampleReadError(f"{self.source}: a decoded frame has no timestamp; expected timestamped frames")
        return round((frame.pts - self.start_pts) * self.time_base * self.fps)


def count_video_frames(source: Path, exact: bool = False) -> int:
    """Number of frames of a video that decode: from the container's header, or by demuxing
    when ``exact`` or when the header does not say. Demuxing reads packets without decoding
    them and leaves out packets marked to be discarded (the frames before the cut of an MP4
    trimmed without re-encoding, which an edit list hides). The header's count includes those,
    so it is used only when it agrees with the stream's duration."""
    source = Path(source)
    _check_is_a_file(source)
    try:
        with _open(source) as container:
            stream = _video_stream(container, source)
            # (AVI with B-frames: numbered as shown, so its empty chunks, dropped frames, do not count)
            header_counts = not exact and not _numbers_frames_in_decoding_order(container, stream)
            if not (stream.frames > 0 and header_counts and _header_count_fits_duration(stream)):
                return _demuxed_count(container, stream, source)
            if _last_frame_is_in_the_file(container, stream):
                return stream.frames
        with _open(source) as container:  # (from its start again: the check above has seeked)
            return _demuxed_count(container, _video_stream(container, source), source)
    except av.FFmpegError as error:
        raise SampleReadError(f"{source}: cannot read the video ({error})") from error


def _demuxed_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   source: Path) -> int:
    """:func:`_demuxed_frame_count` from the container's start, with a warning where it falls
    short of what the duration implies (a truncated file)."""
    frames, leading = _demuxed_frame_count(container, stream)
    expected = _frames_by_duration(container, stream)
    # (Matroska and WebM give the time the last frame ends at as the duration, so a video whose
    # first frame is late has its leading frames allowed for.)
    if expected is not None and frames < expected - max(2, expected // 100) - leading:
        logger.warning("%s: %d frames demuxed, where its duration implies %d: truncated? (it is read as %d frames)",
                       source, frames, expected, frames)
    return frames


def _check_is_a_file(source: Path) -> None:
    if not source.is_file():
        raise SampleReadError(f"video file {source} " + ("is a folder" if source.is_dir() else "does not exist"))


def _open(source: Path) -> av.container.InputContainer:
    """Open a video file; metadata that is not UTF-8 (a Latin-1 title) is decoded with
    replacement characters rather than stopping the read."""
    return av.open(str(source), metadata_errors="replace")


def _video_stream(container: av.container.InputContainer, source: Path) -> av.video.stream.VideoStream:
    """FFmpeg's best video stream (``av_find_best_stream``: not a cover picture, and with the
    most frames probed where a file holds several, e.g. a still image as its first track)."""
    if not container.streams.video:
        raise SampleReadError(f"{source}: no video stream; expected a video file")
    return container.streams.best("video")


def _is_avi(container: av.container.InputContainer) -> bool:
    return container.format.name == "avi"


def _starts_at_first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """Whether frame 0 is the first frame shown rather than the stream's start time: where the
    header gives none (short Matroska files) and in AVI (whose numbers may start at 1)."""
    return stream.start_time is None or _is_avi(container)


def _numbers_frames_in_decoding_order(container: av.container.InputContainer,
                                      stream: av.video.stream.VideoStream) -> bool:
    """Whether the frames' numbers are in decoding order and B-frames make it differ from the
    display order (AVI, which stores no presentation timestamps), so that frames are numbered
    in the order they are shown instead."""
    return _is_avi(container) and bool(stream.codec_context.has_b_frames)


def _demuxed_frame_count(container: av.container.InputContainer,
                         stream: av.video.stream.VideoStream) -> tuple[int, int]:
    """The frame count by demuxing (reading packets without decoding them): one more than the
    last frame's index, as the reader computes indices; packets marked to be discarded (frames
    an MP4 edit list hides) or corrupt (the cut last packet of a truncated file, which the
    reader skips) are left out. In AVI with B-frames, the number of packets. Also
    returns the frames the first one comes after (its timestamp in frames, 0 when at or before 0)."""
    packets, first, last = 0, None, None  # (packets are counted, not kept: their data can be gigabytes)
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard or packet.is_corrupt:  # (a truncated file's cut last packet)
            continue
        packets += 1
        if packet.pts is not None:
            first = packet.pts if first is None else min(first, packet.pts)
            last = packet.pts if last is None else max(last, packet.pts)
    fps = _nominal_rate(stream)
    if first is None or last is None or fps is None or stream.time_base is None:
        return packets, 0
    frame_of = Fraction(stream.time_base) * fps  # frames per timestamp unit
    leading = max(0, round(first * frame_of))
    if _numbers_frames_in_decoding_order(container, stream):
        return packets, leading
    start = first if _starts_at_first_frame(container, stream) else stream.start_time  # (as the reader)
    return round((last - start) * frame_of) + 1, leading


def _nominal_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's frame rate: FFmpeg's guess (the rate its timestamps step at, or the average
    where that looks wrong), else its average, else its base rate."""
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    return Fraction(rate) if rate else None


def _stream_seconds(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The video stream's own duration in seconds, when its header gives one."""
    if stream.duration and stream.time_base is not None:
        return stream.duration * Fraction(stream.time_base)
    return None


def _frames_by_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """The frame count the video stream's duration (or, with no other stream, the container's)
    implies at its rate; None when neither is known."""
    fps, seconds = _nominal_rate(stream), _stream_seconds(stream)
    if seconds is None and container.duration and len(container.streams) == 1:
        seconds = Fraction(container.duration, av.time_base)
    if fps is None or seconds is None:
        return None
    return round(seconds * fps)


def _header_count_fits_duration(stream: av.video.stream.VideoStream) -> bool:
    """Whether the header's frame count is the stream's duration times its rate, to less than a
    frame (or the header gives no duration to check it against). A frame apart is a frame an
    MP4 edit list hides (a cut one frame after a key frame), not rounding: encoders' files
    agree exactly."""
    fps, seconds = _nominal_rate(stream), _stream_seconds(stream)
    if fps is None or seconds is None:
        return True
    return abs(seconds * fps - stream.frames) < 1


# The check of a file's end seeks this many frames before its last one, and reads the packets
# from there to the end: in decoding order (what a seek goes by) the last frame shown may come a
# few packets before the end (B-frames).
_END_FRAMES = 16


def _last_frame_is_in_the_file(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """Whether the packet of the last frame the header times can be read. A file cut short whose
    index is at its start (an MP4 written with ``faststart``) keeps a header that counts and
    times every frame; the seek then lands past the end of the data, or the packets stop short
    of the last frame. True where the header gives no times to check. Reads at most a few
    dozen packets (no decoding)."""
    if stream.duration is None or stream.start_time is None or stream.time_base is None:
        return True
    fps = _nominal_rate(stream)
    if fps is None:
        return True
    frame_period = 1 / (Fraction(stream.time_base) * fps)  # in timestamp units
    last = stream.start_time + stream.duration - frame_period
    container.seek(max(stream.start_time, math.floor(last - _END_FRAMES * frame_period)), stream=stream,
                   backward=True, any_frame=True)
    for count, packet in enumerate(container.demux(stream)):
        if packet.size > 0 and packet.pts is not None and packet.pts >= last - frame_period / 2:
            return True
        if count >= 4 * _END_FRAMES:
            return False
    return False
