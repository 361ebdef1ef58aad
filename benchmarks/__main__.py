"""`python -m benchmarks COMMAND [options]`: speed (all, data, step, gpu), recipe quality (quality),
augmentation on small data (small-data) or the size/speed table of the modern recipe's sizes (sizes).

    python -m benchmarks all --out runs/bench.json          # make bench
    python -m benchmarks quality --kimg 480 --out q.json    # make bench-quality
    python -m benchmarks small-data --steps 3000            # make bench-small-data
    python -m benchmarks sizes --out sizes.json             # make bench-sizes
    python -m benchmarks quality --help                     # each command's own options

The command may stand anywhere among the options (`--out r.json quality` runs the quality bench).
"""
import sys

from benchmarks.speed import COMMANDS as SPEED_COMMANDS


def split_command(argv):
    """(command, the other arguments): the first argument that names a command, wherever it stands."""
    for i, arg in enumerate(argv):
        if arg in ("quality", "small-data", "sizes") or arg in SPEED_COMMANDS:
            return arg, argv[:i] + argv[i + 1:]
    return None, argv


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = split_command(argv)
    if command == "quality":
        from benchmarks.quality import main as quality_main
        return quality_main(rest)
    if command == "small-data":
        from benchmarks.small_data import main as small_data_main
        return small_data_main(rest)
    if command == "sizes":
        from benchmarks.sizes import main as sizes_main
        return sizes_main(rest)
    from benchmarks.speed import main as speed_main
    return speed_main(argv if command is None else [command, *rest])


if __name__ == "__main__":
    main()
