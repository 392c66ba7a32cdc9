"""``python -m bench``: the same command as ``strata bench``."""

from cli.bench import bench

if __name__ == "__main__":
    bench(prog_name="python -m bench", obj={})
