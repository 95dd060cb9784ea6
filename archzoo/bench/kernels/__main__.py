"""``python -m archzoo.bench.kernels``: the same as ``archzoo bench kernels``."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
