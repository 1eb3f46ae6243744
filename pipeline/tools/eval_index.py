"""`curate eval-index`: hash a folder of evaluation images into a Parquet index for the decontaminate stage.

With a folder as `decontaminate.eval_set` every worker hashes the folder
itself; for a large evaluation set, index it once with this command and
point `eval_set` at the Parquet file.
"""
from __future__ import annotations

import sys

from pipeline.dedup.eval_set import hash_folder, write_index
from pipeline.media.imaging import ResizeParams

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")


def add_eval_index_command(subparsers) -> None:
    command = subparsers.add_parser(
        "eval-index",
        help="hash a folder of evaluation images into a Parquet index for the decontaminate stage",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    command.add_argument("folder", help="folder of evaluation images (searched recursively)")
    command.add_argument("output", help="Parquet file to write (name, phash, colour_grid)")
    command.add_argument("--image-size", type=int, default=256, help="the recipe's resize.image_size (default 256)")
    command.add_argument("--resize-mode", default="border", choices=RESIZE_MODES,
                         help="the recipe's resize.resize_mode (default border): padding changes the hash")
    command.set_defaults(handler=eval_index_command)


def eval_index_command(args, beam_args: list[str]) -> int:
    names, payloads = hash_folder(args.folder, ResizeParams(image_size=args.image_size, resize_mode=args.resize_mode))
    if not payloads:
        print(f"curate: error: no readable image in {args.folder}", file=sys.stderr)
        return 1
    write_index(names, payloads, args.output)
    print(f"{len(names)} images hashed into {args.output}")
    return 0
