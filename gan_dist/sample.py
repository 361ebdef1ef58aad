"""`python -m gan_dist.sample`: images from a trained generator (gan_dist/evaluation/sample.py)."""
from gan_dist.evaluation.sample import main

if __name__ == "__main__":
    main()
