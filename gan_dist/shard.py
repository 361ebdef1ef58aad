"""`python -m gan_dist.shard`: pack images into WebDataset shards (gan_dist/packing/shard.py)."""
from gan_dist.packing.shard import main

if __name__ == "__main__":
    main()
