"""``python -m bench.accuracy``: see `bench.accuracy.main`."""

from bench.accuracy import main

main()
