"""Writers of tiny real-format media for dataset tests: JPEG frame folders and encoded videos.

Every frame encodes (video number, frame number) in its red and green levels, far enough apart
to survive JPEG and video compression, so a test can tell from the pixels which video and which
frames a clip came from. Blue is 0 on the left half and 255 on the right half, so a test can also
tell whether a clip was flipped horizontally.
"""

from __future__ import annotations

from pathlib import Path

import av
import torch
from torchvision.io import write_jpeg

FRAME_SIZE = (24, 32)  # (H, W): small, but even (as yuv420p needs) and above the test crop


def frame_colour(video_number: int, frame_number: int) -> tuple[int, int, int]:
    """RGB colour of a frame: red = 30 * video number (video number <= 8), green = 8 * frame number (< 32 frames)."""
    return (30 * video_number, min(255, 8 * frame_number), 128)


def decode_video_number(clip: torch.Tensor) -> int:
    """Read the video number back from a uint8 ``(..., 3, H, W)`` clip (all of it from one video)."""
    return round(clip[..., 0, :, :].float().mean().item() / 30)


def decode_frame_numbers(clip: torch.Tensor) -> list[int]:
    """Read the frame numbers back from a uint8 ``(T, 3, H, W)`` clip."""
    return [round(frame[1].float().mean().item() / 8) for frame in clip]


def is_flipped(clip: torch.Tensor) -> bool:
    """Whether a uint8 ``(..., 3, H, W)`` clip shows its frames mirrored (bright blue on the left)."""
    return bool(clip[..., 2, :, 0].float().mean() > 128)


def _frame(video_number: int, frame_number: int) -> torch.Tensor:
    colour = torch.tensor(frame_colour(video_number, frame_number), dtype=torch.uint8)
    frame = colour.view(3, 1, 1).expand(3, *FRAME_SIZE).contiguous()
    frame[2, :, FRAME_SIZE[1] // 2 :] = 255
    frame[2, :, : FRAME_SIZE[1] // 2] = 0
    return frame


def write_frame_folder(folder: Path, video_number: int, num_frames: int, template: str, first_index: int = 1) -> None:
    """Frames ``template.format(first_index) ...`` as JPEG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame_number in range(num_frames):
        write_jpeg(_frame(video_number, frame_number), str(folder / template.format(frame_number + first_index)), quality=95)


def write_video(path: Path, video_number: int, num_frames: int, codec: str = "mpeg4", fps: int = 12) -> None:
    """An encoded video (container from the suffix: .mp4, .webm) with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        if codec in {"libvpx", "libvpx-vp9"}:
            stream.options = {"crf": "4", "b": "1M"}
        else:
            stream.options = {"qscale": "1"} if codec == "mpeg4" else {}
        for frame_number in range(num_frames):
            image = _frame(video_number, frame_number).permute(1, 2, 0).numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# Small clips keep the DataModule tests fast: 4 frames per clip, 16 x 16 crops.
TINY_DATA_SETTINGS = dict(
    num_segments=4, batch_size=2, num_workers=0, input_size=16, resize_size=16, scales=(1.0, 0.875), seed=3
)


def check_loaders(datamodule, expected: dict[str, dict[str, int] | None], video_numbers: dict[str, int]) -> None:
    """Run a DataModule's train / val / test loaders and check every batch against the truth.

    ``expected``: sample id -> labels (None for unlabelled samples); ``video_numbers``: sample
    id -> the video number its frames encode. Training labels are checked up to the dataset's
    ``transform_labels`` (the flip swap), which the clip's pixels say whether to apply.
    """
    datamodule.setup("fit")
    datamodule.setup("test")
    size, frames = datamodule.input_size, datamodule.num_segments
    for role, loader in (("train", datamodule.train_dataloader()), ("val", datamodule.val_dataloader()),
                         ("test", datamodule.test_dataloader())):
        seen = 0
        for batch in loader:
            clips = batch["clip"]
            assert clips.dtype == torch.uint8
            views = () if role == "train" else (1,)
            assert clips.shape == (len(batch["id"]), *views, frames, 3, size, size), (role, clips.shape)
            for position, sample_id in enumerate(batch["id"]):
                clip = clips[position]
                assert decode_video_number(clip) == video_numbers[sample_id], (role, sample_id)
                truth = expected[sample_id]
                if truth is None:
                    assert "labels" not in batch, (role, sample_id)
                    continue
                if role == "train":
                    truth = datamodule.transform_labels(dict(truth), is_flipped(clip))
                got = {head: int(values[position]) for head, values in batch["labels"].items()}
                assert got == truth, (role, sample_id, got, truth)
            seen += len(batch["id"])
        split = {"train": "train", "val": "val", "test": datamodule.test_split}[role]
        expected_count = len(datamodule.samples(split))
        assert seen == (expected_count // loader.batch_size * loader.batch_size if role == "train" else expected_count)


def fit_one_epoch_with_config(config: str, data_arguments: dict, run_dir: Path) -> None:
    """``gsf fit --config <config>`` for one epoch on CPU, with the tiny dataset and a small, random
    ResNet-18 in place of the recipe's data paths and ImageNet backbone (no download needed)."""
    from lightning_gsf.cli import main

    data_keys = ("root", "annotations_dir", "labels_file", "vocab_file", "class_names_file", "path_template", "layout",
                 "num_segments", "batch_size", "num_workers", "input_size", "resize_size", "missing_report_dir")
    overrides = [
        f"--data.init_args.{key}={value}" for key, value in data_arguments.items() if key in data_keys
    ]
    main([
        "fit", "--config", config, *overrides,
        f"--data.init_args.frame_count_cache={run_dir / 'frame_counts.csv'}",
        "--model.backbone=resnet18", "--model.pretrained=null",
        "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.precision=32",
        f"--trainer.default_root_dir={run_dir}",
    ])


def fit_tiny_synthetic_epic(tmp_path: Path, *extra: str) -> Path:
    """``gsf fit`` for two epochs of one batch on a tiny synthetic EPIC dataset (frames, 32 px,
    a random ResNet-18, CPU) with ``extra`` arguments; the run's folder (``tmp_path / "run"``).
    The dataset is written once per ``tmp_path`` (a second call, to resume, reuses it). The
    caller keeps pytest's command line from ``gsf`` (``sys.argv``)."""
    from lightning_gsf.cli import main
    from lightning_gsf.data.synthetic import generate_synthetic_dataset

    data, run = tmp_path / "data", tmp_path / "run"
    if not data.exists():
        generate_synthetic_dataset(data, num_train=4, num_val=2, num_test=1, size=32, videos=False)
    main([
        "fit", "--data=lightning_gsf.data.epic.EpicKitchensDataModule", f"--data.init_args.root={data}",
        "--data.init_args.num_segments=2", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--data.init_args.input_size=32", "--data.init_args.resize_size=32",
        "--model.backbone=resnet18", "--model.pretrained=null", "--model.warmup_epochs=0",
        f"--trainer.default_root_dir={run}", "--trainer.accelerator=cpu", "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", *extra,
    ])  # fmt: skip
    return run

