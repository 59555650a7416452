"""Write or check the committed SDL, ``apps/graphapi/schema.graphql``.

    python -m graphapi.sdl           # rewrite schema.graphql from the code
    python -m graphapi.sdl --check   # exit 1 (with a diff) when it differs from the code

The same text as ``strawberry export-schema graphapi.schema:schema`` (that command needs
strawberry's optional CLI dependencies; this needs nothing more than the service does).
A test compares the live schema with the committed file, so a schema change is always
a reviewed change of ``schema.graphql`` too.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

__all__ = ["SDL_PATH", "current_sdl", "main"]

SDL_PATH = Path(__file__).with_name("schema.graphql")


def current_sdl() -> str:
    """The schema's SDL as the code defines it (trailing newline included)."""
    from graphapi.schema import schema

    return schema.as_str() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphapi.sdl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 when they differ")
    parser.add_argument("--path", type=Path, default=SDL_PATH,
                        help=f"the SDL file (default: {SDL_PATH})")
    args = parser.parse_args(argv)
    sdl = current_sdl()
    if args.check:
        committed = args.path.read_text() if args.path.is_file() else ""
        if committed == sdl:
            print(f"{args.path}: up to date")
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            committed.splitlines(keepends=True), sdl.splitlines(keepends=True),
            str(args.path), "graphapi.schema:schema"))
        print(f"\n{args.path} differs from the code: run `python -m graphapi.sdl`")
        return 1
    args.path.write_text(sdl)
    print(f"wrote {args.path} ({len(sdl.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
