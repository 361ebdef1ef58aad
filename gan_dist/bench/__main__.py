"""`python -m gan_dist.bench`: speed of the input path and the trainer (gan_dist/bench/suite.py)."""
from gan_dist.bench.suite import main

main()
