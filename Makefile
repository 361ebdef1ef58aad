# gan-dist: `make demo` trains on embedded data; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SHARDS ?= shards
RUNS ?= runs

.PHONY: install test demo shards-demo shards-lfw-subset clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# two workers (pytest-xdist): most tests wait on a subprocess's start or on one core
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not benchmarks" tests

# the benchmarks' own end-to-end tests (slow): they run each suite at a tiny size
.PHONY: test-benchmarks
test-benchmarks: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m benchmarks tests

# ---- embedded datasets (shipped inside scikit-learn / scikit-image: no download)
$(SHARDS)/digits/manifest.json: | install
	$(BIN)/python -m gan_dist.shard digits --out $(SHARDS)/digits --size 32 --channels 1 --shard_size 256

shards-demo: $(SHARDS)/digits/manifest.json

shards-lfw-subset: install
	$(BIN)/python -m gan_dist.shard lfw-subset --out $(SHARDS)/lfw-subset --size 32 --channels 1 --shard_size 50

# ---- the demo: the vanilla MLP GAN on handwritten digits, on the CPU
DEMO_FLAGS ?= --n_epochs 150 --sample_interval 500 --log_steps 50 --checkpointing_steps 1000 --checkpoints_total_limit 2
demo: shards-demo
	rm -rf $(RUNS)/demo
	$(BIN)/python -m gan_dist.train --cpu --data $(SHARDS)/digits --img_size 32 --channels 1 \
		--output_dir $(RUNS)/demo $(DEMO_FLAGS)
	@echo "demo run directory: $(RUNS)/demo (samples/, metrics.jsonl, checkpoints/, wandb/)"

# ---- the modern recipe (--preset modern --size small) on the same digits: 2 gloo processes of batch 32, 160 kimg
# (6.5 minutes on 2 idle AMD EPYC cores, packing included); G_ema's grid goes to $(RUNS)/demo-modern/grid.png
DEMO_MODERN_STEPS ?= 2500
DEMO_MODERN_FLAGS ?= --sample_interval 500 --log_steps 50 --checkpointing_steps 500 --checkpoints_total_limit 1
.PHONY: demo-modern
demo-modern: shards-demo
	rm -rf $(RUNS)/demo-modern
	OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1 $(BIN)/python -m torch.distributed.run --standalone --nproc_per_node=2 \
		gan_dist/train.py --cpu --preset modern --size small --data $(SHARDS)/digits --img_size 32 --channels 1 \
		--batch_size 32 --n_cpu 0 --max_train_steps $(DEMO_MODERN_STEPS) --output_dir $(RUNS)/demo-modern \
		--report_to none $(DEMO_MODERN_FLAGS)
	$(BIN)/python -m gan_dist.sample --checkpoint $(RUNS)/demo-modern --n 64 --seed 1 --grid $(RUNS)/demo-modern/grid.png
	@echo "demo-modern run directory: $(RUNS)/demo-modern (grid.png, samples/, metrics.jsonl, checkpoints/)"

clean:
	rm -rf $(RUNS) $(SHARDS)/*/ .pytest_cache

# ---- datasets: download (cached, checksummed), crop, resize, shard into $(SHARDS)/NAME/
# 128x128 RGB: the trainer's default --img_size
SIZE ?= 128
CHANNELS ?= 3
FORMAT ?= png
CENTER_CROP ?=
CROPS ?=
SEED ?= 0
SRC ?=
SHA256 ?=
LOL_VERSION ?=
SHARD_FLAGS = --size $(SIZE) --channels $(CHANNELS) --format $(FORMAT) --seed $(SEED) \
	$(if $(CENTER_CROP),--center_crop $(CENTER_CROP)) $(if $(CROPS),--crops_per_image $(CROPS)) \
	$(if $(SHA256),--sha256 $(SHA256)) $(if $(SRC),--src $(SRC))
.PHONY: shards shards-lfw shards-anime shards-lol

shards-lfw shards-anime: shards-%: install
	$(BIN)/python -m gan_dist.shard $* --out $(SHARDS)/$* $(SHARD_FLAGS)

shards-lol: install
	$(BIN)/python -m gan_dist.shard lol --out $(SHARDS)/lol $(if $(LOL_VERSION),--version $(LOL_VERSION)) $(SHARD_FLAGS)

# make shards SRC=PATH_OR_URL NAME=name: a folder, a .tgz/.tar/.zip, or a URL of one
shards: install
	@test -n "$(SRC)" -a -n "$(NAME)" || { echo "usage: make shards SRC=PATH_OR_URL NAME=name [SIZE=128 ...]"; exit 2; }
	$(BIN)/python -m gan_dist.shard archive --out $(SHARDS)/$(NAME) $(SHARD_FLAGS)

# ---- benchmarks (benchmarks/, run from this checkout): our loader and trainer against the vanilla loop
# BENCH_FLAGS e.g. --img_size 128 (the step case at the vanilla recipe's size) or --data $(SHARDS)/lfw
BENCH_FLAGS ?=
.PHONY: bench
bench: install
	$(BIN)/python -m benchmarks all --out $(RUNS)/bench.json $(BENCH_FLAGS)

# ---- recipe quality: modes of stacked digits covered by the vanilla MLP, DCGAN and the modern recipe,
# each trained on QUALITY_KIMG thousand images by 2 CPU processes, and the modern recipe on the ten digits
QUALITY_KIMG ?= 480
QUALITY_DIGITS_KIMG ?= 500
QUALITY_FLAGS ?=
.PHONY: bench-quality
bench-quality: install
	$(BIN)/python -m benchmarks quality --kimg $(QUALITY_KIMG) --digits_kimg $(QUALITY_DIGITS_KIMG) \
		--out $(RUNS)/bench_quality.json $(QUALITY_FLAGS)

# ---- augmentation on small data: D's overfitting gap on 500 digits (1,297 held out), the digit judge's figures
# and ADA's p, for --aug none, diffaug and ada, each trained SMALL_DATA_STEPS steps by 2 CPU processes
SMALL_DATA_STEPS ?= 3000
SMALL_DATA_FLAGS ?=
.PHONY: bench-small-data
bench-small-data: install
	$(BIN)/python -m benchmarks small-data --steps $(SMALL_DATA_STEPS) --out $(RUNS)/bench_small_data.json \
		$(SMALL_DATA_FLAGS)

# ---- the size/speed table (docs/performance.md): parameters, GFLOPs/image and peak memory of each --size at
# 32-256 px, images/s of small at 32 and 64 px on this CPU (1 process and 2 gloo processes); JSON + .md
SIZES_FLAGS ?=
.PHONY: bench-sizes
bench-sizes: install
	$(BIN)/python -m benchmarks sizes --out $(RUNS)/bench_sizes.json $(SIZES_FLAGS)
