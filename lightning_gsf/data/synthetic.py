"""A small synthetic dataset in the EPIC-KITCHENS-100 format, in which temporal order decides the verb.

``generate_synthetic_dataset(out_dir)`` (or ``gsf synth --out data/synthetic``, or
``python -m lightning_gsf.data.synthetic --out data/synthetic``) writes::

    <out>/annotations/EPIC_100_train.csv                 the official 15 columns
    <out>/annotations/EPIC_100_validation.csv            the official 15 columns
    <out>/annotations/EPIC_100_test_timestamps.csv       the official 8 columns, no labels
    <out>/annotations/EPIC_100_test.csv                  synthetic only: the test labels
    <out>/annotations/EPIC_100_{verb,noun}_classes.csv   id, key, instances, category
    <out>/annotations/EPIC_100_tail_{verbs,nouns}.csv    the official rule, on the train counts
    <out>/annotations/EPIC_100_unseen_participant_ids_{validation,test}.csv
    <out>/annotations/EPIC_100_video_info.csv            video_id, duration, fps, resolution
    <out>/<participant>/videos/<video_id>.MP4            H.264 (libx264; MPEG-4 part 2 if absent)
    <out>/<participant>/rgb_frames/<video_id>/frame_0000000001.jpg ...
    <out>/synthetic.json                                 the generation settings

so :class:`~lightning_gsf.data.epic.EpicKitchensDataModule` reads it from frames or from video
exactly like the real dataset.

The task. Each video is a sequence of action segments separated by idle gaps; in each segment
one large, saturated object (the *noun*: a shape and a colour) does one thing (the *verb*).
The ten verbs form five time-reversal pairs: move left / right, move up / down, appear /
disappear, grow / shrink, rotate clockwise / anticlockwise. A clip of a verb is generated as
a trajectory of the pair's first verb, then played backwards for the second, with all other
randomness (camera jitter, easing, idle margins; the clutter is static) drawn from
time-symmetric distributions. A verb and its reverse therefore have exactly the same
distribution of single frames, and of unordered sets of frames (a clip and its reverse give
an average over frames the same scores): a model that averages per-frame predictions (TSN) can
at best tell which *pair* a clip belongs to, 50% verb accuracy in expectation if it always
gets the pair right, while a temporal model (GSF, TSM) can reach 100%. The noun is visible in
every frame, so any model learns it. Participants differ by their background (their
"kitchen"); the validation and test sets each add one participant never seen in training
(the ``unseen`` subset). Class frequencies are mildly long-tailed (the tail subsets), but the
two verbs of a pair are always equally likely, so a prior does not tell them apart either.

Determinism. Every video is drawn from its own ``numpy`` generator seeded with
``(seed, split, video number)`` and rendered with deterministic tensor operations, so a seed
gives the same dataset, byte for byte in the CSVs and frame for frame in the pixels, whatever
else is generated. Rendering is vectorised over frames with ``torch``; the default size (a few
hundred clips of 96 x 72 pixels) takes seconds.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg

from lightning_gsf.data.epic import (
    EPIC_ACTION_COLUMNS,
    EPIC_CLASS_COLUMNS,
    EPIC_TIMESTAMP_COLUMNS,
    EPIC_VIDEO_INFO_COLUMNS,
    format_timestamp,
)

__all__ = [
    "NOUNS",
    "REVERSE_VERB",
    "SyntheticDataset",
    "VERBS",
    "generate_synthetic_dataset",
    "main",
    "tail_classes",
]

logger = logging.getLogger(__name__)

# --- the vocabulary -----------------------------------------------------------------------

#: ``(key, category)`` of the verbs; verbs ``2k`` and ``2k + 1`` are each other's time reverse.
VERBS: tuple[tuple[str, str], ...] = (
    ("move-right", "translate"),
    ("move-left", "translate"),
    ("move-down", "translate"),
    ("move-up", "translate"),
    ("appear", "visibility"),
    ("disappear", "visibility"),
    ("grow", "size"),
    ("shrink", "size"),
    ("rotate-clockwise", "rotate"),
    ("rotate-anticlockwise", "rotate"),
)
#: Verb class -> the class of its time reverse.
REVERSE_VERB: dict[int, int] = {verb: verb ^ 1 for verb in range(len(VERBS))}

_SHAPES = ("triangle", "half-disc", "ell", "tee")
# Saturated colours, far from each other and from the muted backgrounds.
_COLOURS: dict[str, tuple[int, int, int]] = {"red": (225, 35, 35), "yellow": (245, 205, 25), "blue": (35, 90, 235)}
#: ``(key, category)`` of the nouns: every shape in every colour, keyed EPIC-style ``noun:modifier``.
NOUNS: tuple[tuple[str, str], ...] = tuple(
    (f"{shape}:{colour}", shape) for shape in _SHAPES for colour in _COLOURS
)

# Mild long tail: class k of a list is drawn with weight (k + 1) ** -_TAIL_EXPONENT.
_TAIL_EXPONENT = 0.6
# The official definition of tail classes: the smallest classes holding this share of training instances.
_TAIL_SHARE = 0.2
_JPEG_QUALITY = 90


# --- settings and result ------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    num_train: int
    num_val: int
    num_test: int
    size: int
    width: int
    fps: int
    seed: int
    min_frames: int
    max_frames: int
    actions_per_video: tuple[int, int]
    num_participants: int
    frames: bool
    videos: bool
    codec: str


@dataclass
class SyntheticDataset:
    """What :func:`generate_synthetic_dataset` wrote."""

    root: Path
    annotations_dir: Path
    num_actions: dict[str, int]
    num_videos: int
    num_frames: int
    codec: str | None
    seconds: float
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Action:
    narration_id: str
    verb: int
    noun: int
    start: int  # 0-based, half-open [start, stop)
    stop: int


@dataclass
class _Video:
    video_id: str
    participant: str
    num_frames: int
    actions: list[_Action]


# --- drawing ------------------------------------------------------------------------------


def _box(u: torch.Tensor, v: torch.Tensor, cx: float, cy: float, hx: float, hy: float) -> torch.Tensor:
    """Distance-like field of an axis-aligned box (negative inside), in object units."""
    return torch.maximum((u - cx).abs() - hx, (v - cy).abs() - hy)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A tall isosceles triangle pointing up (image ``v`` grows downwards)."""
    corners = ((0.0, -1.0), (0.8, 0.85), (-0.8, 0.85))
    centre = (0.0, 0.23)
    field_ = None
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        nx, ny = y1 - y0, x0 - x1
        norm = math.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm
        if (centre[0] - x0) * nx + (centre[1] - y0) * ny > 0:  # make the normal point outwards
            nx, ny = -nx, -ny
        distance = (u - x0) * nx + (v - y0) * ny
        field_ = distance if field_ is None else torch.maximum(field_, distance)
    assert field_ is not None
    return field_


def _shape_field(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance-like field of a shape of radius 1 centred at the origin (negative inside).

    All shapes lack rotational symmetry, so a rotation's direction is visible.
    """
    if shape == "triangle":
        return _triangle(u, v)
    if shape == "half-disc":
        return torch.maximum(torch.sqrt(u * u + v * v) - 1.0, v - 0.25)
    if shape == "ell":
        return torch.minimum(_box(u, v, -0.5, 0.0, 0.32, 0.95), _box(u, v, 0.05, 0.63, 0.87, 0.32))
    if shape == "tee":
        return torch.minimum(_box(u, v, 0.0, -0.63, 0.95, 0.32), _box(u, v, 0.0, 0.1, 0.32, 0.85))
    raise ValueError(f"unknown shape {shape!r}; expected one of {_SHAPES}")


def _progress(rng: np.random.Generator, length: int) -> np.ndarray:
    """How far through its change a segment's object is at each frame: 0 -> 1, monotone.

    The change fills a window of the segment whose two idle margins are drawn from the same
    distribution, and its speed profile is one of a set closed under time reversal (ease-in
    reversed is ease-out), so reversed progress curves have the same distribution as forward ones.
    """
    lead, trail = rng.uniform(0.0, 0.2, size=2)
    t = (np.arange(length) + 0.5) / length
    s = np.clip((t - lead) / (1.0 - lead - trail), 0.0, 1.0)
    easing = rng.integers(4)
    if easing == 1:
        s = s * s * (3 - 2 * s)  # smoothstep, its own reverse
    elif easing == 2:
        s = s * s  # ease-in
    elif easing == 3:
        s = 1 - (1 - s) ** 2  # ease-out, the reverse of ease-in
    return s


class _Track:
    """Per-frame parameters of a whole video, filled segment by segment, then rendered at once."""

    def __init__(self, num_frames: int) -> None:
        self.present = np.zeros(num_frames, dtype=bool)
        self.x = np.zeros(num_frames)
        self.y = np.zeros(num_frames)
        self.radius = np.ones(num_frames)
        self.angle = np.zeros(num_frames)
        self.alpha = np.zeros(num_frames)
        self.shape = np.zeros(num_frames, dtype=np.int64)
        self.colour = np.zeros((num_frames, 3))


def _margin(radius: float) -> float:
    """How far an object's centre must stay from the frame's edges to be wholly in view."""
    return radius * 1.05 + 2


def _fill_action(track: _Track, action: _Action, rng: np.random.Generator, width: int, height: int) -> None:
    """Draw one action's trajectory (the pair's forward verb), reversed for the backward verb."""
    length = action.stop - action.start
    forward_verb = action.verb & ~1
    p = _progress(rng, length)
    radius = np.full(length, rng.uniform(0.2, 0.27) * height)
    angle = np.full(length, rng.uniform(-0.5, 0.5))
    alpha = np.ones(length)
    x = np.full(length, rng.uniform(_margin(radius[0]), width - _margin(radius[0])))
    y = np.full(length, rng.uniform(_margin(radius[0]), height - _margin(radius[0])))
    if forward_verb == 0:  # move right
        room = width - 2 * _margin(radius[0])  # how far the object can travel and stay in view
        distance = min(rng.uniform(0.35, 0.5) * width, 0.95 * room)
        x0 = rng.uniform(_margin(radius[0]), width - _margin(radius[0]) - distance)
        x = x0 + distance * p
    elif forward_verb == 2:  # move down
        radius[:] = rng.uniform(0.16, 0.2) * height
        room = height - 2 * _margin(radius[0])
        distance = min(rng.uniform(0.3, 0.4) * height, 0.95 * room)
        y0 = rng.uniform(_margin(radius[0]), height - _margin(radius[0]) - distance)
        x = np.full(length, rng.uniform(_margin(radius[0]), width - _margin(radius[0])))
        y = y0 + distance * p
    elif forward_verb == 4:  # appear
        alpha = p
    elif forward_verb == 6:  # grow
        small, large = rng.uniform(0.1, 0.13) * height, rng.uniform(0.28, 0.33) * height
        radius = small * (large / small) ** p
        x = np.full(length, rng.uniform(_margin(large), width - _margin(large)))
        y = np.full(length, rng.uniform(_margin(large), height - _margin(large)))
    elif forward_verb == 8:  # rotate clockwise (positive angles turn clockwise on screen)
        angle = angle + rng.uniform(math.radians(70), math.radians(110)) * p
    if action.verb != forward_verb:  # the backward verb plays the same trajectory in reverse
        x, y, radius, angle, alpha = (values[::-1] for values in (x, y, radius, angle, alpha))
    frames = slice(action.start, action.stop)
    shape_name, colour_name = NOUNS[action.noun][0].split(":")
    track.present[frames] = True
    track.x[frames], track.y[frames], track.radius[frames] = x, y, radius
    track.angle[frames], track.alpha[frames] = angle, alpha
    track.shape[frames] = _SHAPES.index(shape_name)
    track.colour[frames] = np.clip(np.array(_COLOURS[colour_name]) * rng.uniform(0.85, 1.1), 0, 255)


@dataclass(frozen=True)
class _Kitchen:
    """A participant's background: a muted colour with a soft, low-frequency pattern."""

    base: tuple[float, float, float]
    amplitude: float
    wavelengths: tuple[float, float]
    phases: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, size: int) -> _Kitchen:
        base = tuple(float(c) for c in rng.uniform(70, 150, size=3))
        wavelengths = tuple(float(w) for w in rng.uniform(0.5, 1.2, size=2) * size)
        phases = tuple(float(p) for p in rng.uniform(0, 2 * math.pi, size=2))
        return cls(base, float(rng.uniform(12, 22)), wavelengths, phases)  # type: ignore[arg-type]


# The sprites of the shapes span [-_SPRITE_EXTENT, _SPRITE_EXTENT] object units on a side.
_SPRITE_PIXELS = 64
_SPRITE_EXTENT = 1.25
# The camera wanders at most this many pixels from its mean position.
_MAX_JITTER = 4


@functools.lru_cache(maxsize=1)
def _sprites() -> torch.Tensor:
    """Anti-aliased coverage masks of the shapes, ``(num_shapes, 1, S, S)`` float32, drawn once."""
    side = (torch.arange(_SPRITE_PIXELS, dtype=torch.float32) + 0.5) / _SPRITE_PIXELS * 2 - 1
    v, u = torch.meshgrid(side * _SPRITE_EXTENT, side * _SPRITE_EXTENT, indexing="ij")
    pixels_per_unit = _SPRITE_PIXELS / (2 * _SPRITE_EXTENT)
    masks = [(0.5 - _shape_field(shape, u, v) * pixels_per_unit).clamp(0, 1) for shape in _SHAPES]
    return torch.stack(masks).unsqueeze(1)


def _canvas(kitchen: _Kitchen, rng: np.random.Generator, width: int, height: int) -> torch.Tensor:
    """A video's static scene, ``(3, H + 2m, W + 2m)`` float32 with a margin ``m`` for the camera's jitter:
    the kitchen's pattern and a few small, dull discs of clutter."""
    margin = _MAX_JITTER
    ys, xs = torch.meshgrid(
        torch.arange(height + 2 * margin, dtype=torch.float32) + 0.5 - margin,
        torch.arange(width + 2 * margin, dtype=torch.float32) + 0.5 - margin,
        indexing="ij",
    )
    pattern = torch.sin(2 * math.pi * xs / kitchen.wavelengths[0] + kitchen.phases[0]) * torch.sin(
        2 * math.pi * ys / kitchen.wavelengths[1] + kitchen.phases[1]
    )
    image = torch.tensor(kitchen.base, dtype=torch.float32).view(3, 1, 1) + kitchen.amplitude * pattern
    image = image + 0.25 * (ys - height / 2)  # lighter towards the bottom, like a worktop
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius, grey = rng.uniform(0.04, 0.07) * height, rng.uniform(40, 200)
        cover = (0.5 - (torch.hypot(xs - cx, ys - cy) - radius)).clamp(0, 1)
        image = image * (1 - cover) + grey * cover
    return image


def _camera_path(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Integer camera offsets ``(N, 2)``: a centred random walk, symmetric under time reversal."""
    steps = rng.choice((-1, 0, 0, 1), size=(num_frames, 2))
    path = np.cumsum(steps, axis=0)
    path = path - np.round(path.mean(axis=0)).astype(path.dtype)
    return np.clip(path, -_MAX_JITTER, _MAX_JITTER)


def _render(
    track: _Track, kitchen: _Kitchen, rng: np.random.Generator, width: int, height: int, chunk: int = 128
) -> torch.Tensor:
    """All frames of a video as uint8 ``(N, 3, H, W)``: the jittered scene, then the object.

    The object is drawn by resampling its shape's sprite with one affine map per frame
    (``affine_grid`` + ``grid_sample``), which places, rotates and scales it in two tensor
    operations for a whole chunk of frames.
    """
    num_frames = len(track.x)
    canvas = _canvas(kitchen, rng, width, height)
    camera = _camera_path(rng, num_frames)
    out = torch.empty(num_frames, 3, height, width, dtype=torch.uint8)
    for first in range(0, num_frames, chunk):
        part = slice(first, min(first + chunk, num_frames))
        image = torch.stack(
            [
                canvas[:, _MAX_JITTER + dy : _MAX_JITTER + dy + height, _MAX_JITTER + dx : _MAX_JITTER + dx + width]
                for dx, dy in camera[part]
            ]
        )
        if track.present[part].any():
            cover, colour = _object_cover(track, part, camera[part], width, height)
            image = image + (colour - image) * cover
        out[part] = image.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _object_cover(
    track: _Track, part: slice, camera: np.ndarray, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The object's coverage ``(n, 1, H, W)`` (opacity included) and colour ``(n, 3, 1, 1)`` in a chunk."""
    # Output pixel centre X = (x_n + 1) * W / 2 in grid_sample's normalised coordinates; the object
    # frame is (X - cx) rotated back by the object's angle and divided by its radius; the sprite's
    # normalised coordinates are those divided by the sprite's extent. All affine in (x_n, y_n).
    cx = torch.from_numpy(track.x[part] - camera[:, 0]).float()
    cy = torch.from_numpy(track.y[part] - camera[:, 1]).float()
    scale = torch.from_numpy(track.radius[part]).float() * _SPRITE_EXTENT
    angle = torch.from_numpy(track.angle[part]).float()
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    half_w, half_h = width / 2, height / 2
    theta = torch.stack(
        [
            torch.stack([cos * half_w, sin * half_h, cos * (half_w - cx) + sin * (half_h - cy)], dim=-1),
            torch.stack([-sin * half_w, cos * half_h, -sin * (half_w - cx) + cos * (half_h - cy)], dim=-1),
        ],
        dim=1,
    )
    n = theta.shape[0]
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    sprites = _sprites()[torch.from_numpy(track.shape[part])]
    cover = F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    opacity = torch.from_numpy(track.alpha[part] * track.present[part]).float().view(n, 1, 1, 1)
    colour = torch.from_numpy(track.colour[part]).float().view(n, 3, 1, 1)
    return cover * opacity, colour


# --- planning the dataset -----------------------------------------------------------------


def _class_weights(count: int) -> np.ndarray:
    weights = (np.arange(count) + 1.0) ** -_TAIL_EXPONENT
    return weights / weights.sum()


def _videos_of_split(
    split: str, settings: _Settings, participants: Sequence[str], video_numbers: Counter
) -> Iterator[tuple[str, str, np.random.Generator]]:
    """``(video_id, participant, generator)`` of the split's videos, one after the other, without end.

    Participants take turns; video numbers continue across splits, as in EPIC (``P01_01``,
    ``P01_02``, ...). Each video's generator depends only on the seed, the split and its position.
    """
    split_code = ("train", "val", "test").index(split)
    for video_index in itertools.count():
        participant = participants[video_index % len(participants)]
        video_numbers[participant] += 1
        video_id = f"{participant}_{video_numbers[participant]:02d}"
        seed = np.random.SeedSequence([settings.seed, split_code, video_index])
        yield video_id, participant, np.random.default_rng(seed)


def _draw_actions(
    video_id: str, rng: np.random.Generator, budget: int, settings: _Settings
) -> tuple[list[_Action], int]:
    """The actions of one video (at most ``budget``) and its number of frames."""
    low, high = settings.actions_per_video
    count = min(int(rng.integers(low, high + 1)), budget)
    # Verb pairs and nouns are long-tailed; the direction within a pair is a fair coin.
    pairs = rng.choice(len(VERBS) // 2, size=count, p=_class_weights(len(VERBS) // 2))
    directions = rng.integers(2, size=count)
    nouns = rng.choice(len(NOUNS), size=count, p=_class_weights(len(NOUNS)))
    position = int(rng.integers(2, 8))
    actions = []
    for number in range(count):
        length = int(rng.integers(settings.min_frames, settings.max_frames + 1))
        verb = int(2 * pairs[number] + directions[number])
        actions.append(_Action(f"{video_id}_{number}", verb, int(nouns[number]), position, position + length))
        position += length + int(rng.integers(2, 8))  # an idle gap between actions
    return actions, position


def tail_classes(counts: Counter, num_classes: int, share: float = _TAIL_SHARE) -> list[int]:
    """The official tail rule: the fewest classes, smallest first, holding ``share`` of the instances."""
    total = sum(counts.values())
    tail, covered = [], 0
    for cls in sorted(range(num_classes), key=lambda c: (counts.get(c, 0), c)):
        if covered >= share * total:
            break
        tail.append(cls)
        covered += counts.get(cls, 0)
    return sorted(tail)


# --- writing ------------------------------------------------------------------------------


def _pick_codec(requested: str | None) -> str:
    """``requested``, else H.264 (libx264) when this PyAV build has the encoder, else MPEG-4 part 2."""
    candidates = [requested] if requested else ["libx264", "mpeg4"]
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
        except (av.FFmpegError, ValueError):
            continue
        if name != candidates[0]:
            logger.warning("video encoder %s is not in this PyAV build; writing %s instead", candidates[0], name)
        return name
    raise RuntimeError(f"none of the video encoders {candidates} is available in this PyAV build")


def _write_video(path: Path, frames: torch.Tensor, fps: int, codec: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[-1], frames.shape[-2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps  # a key frame a second keeps seeks short
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.codec_context.bit_rate = 2_000_000
        for frame in frames.permute(0, 2, 3, 1).numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_frames(folder: Path, frames: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, data in enumerate(encode_jpeg(list(frames), quality=_JPEG_QUALITY), start=1):
        (folder / f"frame_{number:010d}.jpg").write_bytes(data.numpy().tobytes())


def _csv_writer(path: Path):
    file = path.open("w", newline="", encoding="utf-8")
    return file, csv.writer(file, lineterminator="\n")


def _action_row(action: _Action, video: _Video, fps: int, labelled: bool) -> list:
    start_time, stop_time = action.start / fps, action.stop / fps
    row = [
        action.narration_id,
        video.participant,
        video.video_id,
        format_timestamp((start_time + stop_time) / 2, decimals=3),
        format_timestamp(start_time),
        format_timestamp(stop_time),
        action.start + 1,  # 1-based, inclusive, as the official files count
        action.stop,
    ]
    if labelled:
        verb, noun = VERBS[action.verb][0], NOUNS[action.noun][0]
        row += [f"{verb} {noun}", verb, action.verb, noun, action.noun, str([noun]), str([action.noun])]
    return row


def _write_annotations(
    folder: Path, videos: dict[str, list[_Video]], settings: _Settings, unseen: dict[str, str]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train": ("EPIC_100_train.csv", True),
        "val": ("EPIC_100_validation.csv", True),
        "test": ("EPIC_100_test.csv", True),
        "test_timestamps": ("EPIC_100_test_timestamps.csv", False),
    }
    for key, (name, labelled) in files.items():
        split = "test" if key == "test_timestamps" else key
        file, writer = _csv_writer(folder / name)
        with file:
            writer.writerow(EPIC_ACTION_COLUMNS if labelled else EPIC_TIMESTAMP_COLUMNS)
            for video in videos[split]:
                for action in video.actions:
                    writer.writerow(_action_row(action, video, settings.fps, labelled))
    for name, vocabulary in (("EPIC_100_verb_classes.csv", VERBS), ("EPIC_100_noun_classes.csv", NOUNS)):
        file, writer = _csv_writer(folder / name)
        with file:
            writer.writerow(EPIC_CLASS_COLUMNS)
            writer.writerows([index, key, str([key]), category] for index, (key, category) in enumerate(vocabulary))
    train_actions = [action for video in videos["train"] for action in video.actions]
    for name, column, num_classes, counts in (
        ("EPIC_100_tail_verbs.csv", "verb", len(VERBS), Counter(a.verb for a in train_actions)),
        ("EPIC_100_tail_nouns.csv", "noun", len(NOUNS), Counter(a.noun for a in train_actions)),
    ):
        file, writer = _csv_writer(folder / name)
        with file:
            writer.writerow([column])
            writer.writerows([cls] for cls in tail_classes(counts, num_classes))
    for split, name in (("val", "validation"), ("test", "test")):
        file, writer = _csv_writer(folder / f"EPIC_100_unseen_participant_ids_{name}.csv")
        with file:
            writer.writerow(["participant_id"])
            writer.writerow([unseen[split]])
    file, writer = _csv_writer(folder / "EPIC_100_video_info.csv")
    with file:
        writer.writerow(EPIC_VIDEO_INFO_COLUMNS)
        for split_videos in videos.values():
            for video in split_videos:
                duration = f"{video.num_frames / settings.fps:.6f}"
                writer.writerow([video.video_id, duration, float(settings.fps), f"{settings.width}x{settings.size}"])


# --- the entry points ---------------------------------------------------------------------


def generate_synthetic_dataset(
    out_dir: Path | str,
    *,
    num_train: int = 384,
    num_val: int = 96,
    num_test: int = 96,
    size: int = 72,
    fps: int = 30,
    seed: int = 0,
    min_frames: int = 16,
    max_frames: int = 40,
    actions_per_video: tuple[int, int] = (4, 8),
    num_participants: int = 4,
    frames: bool = True,
    videos: bool = True,
    codec: str | None = None,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write a synthetic EPIC-KITCHENS-100-format dataset to ``out_dir`` (see the module doc).

    Args:
        out_dir: the dataset root (``root`` of ``EpicKitchensDataModule``).
        num_train: action segments of the train split.
        num_val: action segments of the validation split.
        num_test: action segments of the test split.
        size: frame height in pixels, even and at least 32; the width is 4/3 of it, rounded to
            an even number.
        fps: frame rate of the videos and of the extracted frames (at most 50, so that the
            0.01 s timestamps name exact frames).
        seed: the dataset's seed.
        min_frames: shortest action segment, in frames.
        max_frames: longest action segment, in frames.
        actions_per_video: the range of actions per video.
        num_participants: participants of the train split (validation and test each add an
            unseen one).
        frames: write the extracted-frames layout.
        videos: write the video layout.
        codec: video encoder; default libx264 (H.264), or mpeg4 if this PyAV lacks it.
        overwrite: replace an existing ``out_dir`` (otherwise an existing non-empty folder is an error).
    """
    start_time = time.perf_counter()
    out = Path(out_dir)
    if min(num_train, num_val, num_test, num_participants) < 1 or size < 32 or size % 2 or not 1 <= fps <= 50:
        raise ValueError(
            f"expected >= 1 action per split, >= 1 participant, an even size >= 32 and 1 <= fps <= 50; got "
            f"{num_train}/{num_val}/{num_test} actions, {num_participants} participants, size {size}, fps {fps}"
        )
    if not 1 <= min_frames <= max_frames or not 1 <= actions_per_video[0] <= actions_per_video[1]:
        raise ValueError(
            f"expected 1 <= min_frames <= max_frames and 1 <= actions_per_video[0] <= [1], got {min_frames}, "
            f"{max_frames}, {actions_per_video}"
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another folder or overwrite it (gsf synth --overwrite, or overwrite=True)")
        shutil.rmtree(out)
    width = 2 * round(size * 4 / 3 / 2)
    settings = _Settings(
        num_train, num_val, num_test, size, width, fps, seed, min_frames, max_frames,
        tuple(actions_per_video), num_participants, frames, videos, _pick_codec(codec) if videos else "",
    )  # fmt: skip
    seen = [f"P{number:02d}" for number in range(1, num_participants + 1)]
    unseen = {"val": f"P{num_participants + 1:02d}", "test": f"P{num_participants + 2:02d}"}
    kitchen_rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    kitchens = {participant: _Kitchen.draw(kitchen_rng, size) for participant in seen + list(unseen.values())}

    all_videos: dict[str, list[_Video]] = {}
    video_numbers: Counter = Counter()
    total_frames = 0
    for split, wanted in (("train", num_train), ("val", num_val), ("test", num_test)):
        # (the unseen participant first: a split of one video still has the unseen subset)
        participants = seen if split == "train" else [unseen[split], *seen]
        all_videos[split] = []
        remaining = wanted
        for video_id, participant, rng in _videos_of_split(split, settings, participants, video_numbers):
            if remaining == 0:
                break
            actions, num_frames = _draw_actions(video_id, rng, remaining, settings)
            remaining -= len(actions)
            if frames or videos:  # otherwise only the annotations are wanted
                track = _Track(num_frames)
                for action in actions:
                    _fill_action(track, action, rng, width, size)
                pixels = _render(track, kitchens[participant], rng, width, size)
                if frames:
                    _write_frames(out / participant / "rgb_frames" / video_id, pixels)
                if videos:
                    _write_video(out / participant / "videos" / f"{video_id}.MP4", pixels, fps, settings.codec)
            all_videos[split].append(_Video(video_id, participant, num_frames, actions))
            total_frames += num_frames
    annotations = out / "annotations"
    _write_annotations(annotations, all_videos, settings, unseen)
    recorded = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(settings).items()}
    (out / "synthetic.json").write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
    result = SyntheticDataset(
        root=out,
        annotations_dir=annotations,
        num_actions={split: sum(len(v.actions) for v in split_videos) for split, split_videos in all_videos.items()},
        num_videos=sum(len(split_videos) for split_videos in all_videos.values()),
        num_frames=total_frames,
        codec=settings.codec or None,
        seconds=time.perf_counter() - start_time,
        settings=recorded,
    )
    logger.info(
        "wrote %s: %s actions in %d videos (%d frames of %dx%d at %d fps) in %.1f s",
        out, result.num_actions, result.num_videos, total_frames, width, size, fps, result.seconds,
    )  # fmt: skip
    return result


def build_parser() -> argparse.ArgumentParser:
    """The ``gsf synth`` options."""
    parser = argparse.ArgumentParser(
        prog="gsf synth", description="Write a synthetic dataset in the EPIC-KITCHENS-100 layout."
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root to create, e.g. data/synthetic")
    parser.add_argument("--num-train", type=int, default=384, help="train action segments (default: 384)")
    parser.add_argument("--num-val", type=int, default=96, help="validation action segments (default: 96)")
    parser.add_argument("--num-test", type=int, default=96, help="test action segments (default: 96)")
    parser.add_argument("--size", type=int, default=72, help="frame height in pixels, even, >= 32 (default: 72)")
    parser.add_argument("--fps", type=int, default=30, help="frames per second, <= 50 (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--min-frames", type=int, default=16, help="shortest segment in frames (default: 16)")
    parser.add_argument("--max-frames", type=int, default=40, help="longest segment in frames (default: 40)")
    parser.add_argument("--participants", type=int, default=4, help="participants seen in training (default: 4)")
    parser.add_argument("--no-frames", action="store_true", help="skip the extracted JPEG frames")
    parser.add_argument("--no-videos", action="store_true", help="skip the MP4 videos")
    parser.add_argument("--codec", default=None, help="video encoder (default: libx264, else mpeg4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return parser


def run(args: argparse.Namespace) -> SyntheticDataset:
    """Generate the dataset the parsed ``gsf synth`` options describe."""
    return generate_synthetic_dataset(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        size=args.size,
        fps=args.fps,
        seed=args.seed,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        num_participants=args.participants,
        frames=not args.no_frames,
        videos=not args.no_videos,
        codec=args.codec,
        overwrite=args.overwrite,
    )


def main(argv: Sequence[str] | None = None) -> SyntheticDataset:
    """``gsf synth`` / ``python -m lightning_gsf.data.synthetic``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(args)


if __name__ == "__main__":
    main()
