"""`python -m webui` launches the studio; `python -m webui generate ...` runs one job headless,
`python -m webui xy ...` an X/Y(/Z) plot; `python -m webui import-styles FILE` turns a styles.csv
into user presets."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import cli

    parser = argparse.ArgumentParser(
        prog="img2img-webui", description="Stable Diffusion image-to-image studio.")
    sub = parser.add_subparsers(dest="command")
    cli.add_generate_parser(sub)
    cli.add_xy_parser(sub)
    styles = sub.add_parser("import-styles", help="import a styles.csv as user presets",
                            description="Each style (columns name, prompt, negative_prompt) "
                            "becomes a user preset.")
    styles.add_argument("file", metavar="FILE", help="the styles.csv file")
    styles.add_argument("--user-presets", metavar="DIR", default=None,
                        help="user presets folder (default: user-presets)")
    styles.add_argument("--on-conflict", choices=("skip", "rename", "overwrite"), default="skip",
                        help="when a style's name is taken (default: skip)")
    try:
        from .ui import launch
    except ImportError:
        launch = None
    if launch is not None:
        launch.add_launch_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        from . import cli

        return cli.run_generate(args)
    if args.command == "xy":
        from . import cli

        return cli.run_xy(args)
    if args.command == "import-styles":
        from . import cli

        return cli.run_import_styles(args)
    try:
        from .ui import launch
    except ImportError:
        parser.print_help()
        return 0
    return launch.run(args)


if __name__ == "__main__":
    sys.exit(main())
