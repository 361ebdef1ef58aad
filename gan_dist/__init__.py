"""gan-dist: distributed GAN training with Accelerate on WebDataset shards."""
