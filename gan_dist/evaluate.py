"""`python -m gan_dist.evaluate`: FID/KID of a checkpoint against its pack (gan_dist/evaluation/evaluate.py)."""
from gan_dist.evaluation.evaluate import main

if __name__ == "__main__":
    main()
