"""`python -m gan_dist.summary RUN_DIR`: a run's curves and grids as one page (gan_dist/evaluation/summary.py)."""
from gan_dist.evaluation.summary import main

if __name__ == "__main__":
    main()
