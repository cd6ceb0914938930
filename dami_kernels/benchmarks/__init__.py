"""Benchmarks shipped with the package (the `dami bench` command); entry scripts live in bench/."""
