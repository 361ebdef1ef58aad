"""`python -m gan_dist.export`: a trained generator as a Hugging Face model folder (gan_dist/evaluation/export.py)."""
from gan_dist.evaluation.export import main

if __name__ == "__main__":
    main()
