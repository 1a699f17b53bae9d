"""The ``gsf`` command (placeholder until the training issue lands its LightningCLI)."""

from __future__ import annotations

import argparse

from lightning_gsf import __version__


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gsf", description="Gate-Shift-Fuse video recognition")
    parser.add_argument("--version", action="version", version=f"lightning-gsf {__version__}")
    parser.parse_args(args)
    parser.print_help()


if __name__ == "__main__":
    main()
