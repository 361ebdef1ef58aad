"""What D sees: `--aug none`, `diffaug` (a fixed DiffAugment policy) or `ada` (StyleGAN2-ADA's pipeline with p
adapted to D's overfitting).

    augment, ada = make_augment(args, accelerator, global_batch, meta)   # GANStep(..., augment=augment)
    ada.begin(step)                        # this step's draws from (seed, step, rank)
    d, g = gan_step(...)
    ada.observe(d, step, accelerator)      # every --aug_interval steps: r_t over all ranks, then p moves

The overfitting signal is StyleGAN2-ADA's r_t = E[sign(D(real))] over the augmented reals D judged since the
last adjustment, summed and counted on every rank and all-reduced, so every rank computes the same p. With
`--loss rpgan` D's output has no fixed zero (only differences count), so r_t is E[sign(D(real) - D(fake))] over
the pairs the loss compares, as R3GAN reports it. Every --aug_interval steps p moves by
sign(r_t - target) x global batch x interval / (--aug_kimg x 1000), and stays >= 0: from 0 to 1 in --aug_kimg
thousand images at the most. --aug_p fixes p instead (r_t is still logged).
"""
import math

import torch

from gan_dist.networks.ada import DEFAULT_PIPE, AugmentPipe
from gan_dist.networks.augment import diff_augment, parse_policy

DEFAULT_POLICY = "color,translation,cutout"  # --aug diffaug without --diffaug
MAX_COUNT = 2**53  # signs counted before a float64 in gan.json stops holding every integer


class AdaptiveAugment:
    """The ADA pipeline, its p, and the sums behind r_t. p is a device tensor: moving it needs no host sync."""

    def __init__(self, pipe, seed, device, rank, target, interval, kimg, global_batch, relative, p=0.0):
        self.pipe = AugmentPipe(pipe, seed, device)
        self.pipe.p.fill_(p)
        self.rank, self.target, self.interval, self.relative = rank, target, interval, relative
        self.speed = global_batch * interval / (kimg * 1000)  # p's change per adjustment
        self.pending = torch.zeros(2, dtype=torch.float64, device=device)  # this rank: sum of signs, count
        self.since_log = torch.zeros(2, dtype=torch.float64, device=device)  # all ranks, adjustments since a row

    @property
    def p(self):
        return self.pipe.p

    def __call__(self, images):
        return self.pipe(images)

    def begin(self, step):
        self.pipe.reseed(step, self.rank)

    def observe(self, d, step, accelerator):
        """Count the D phase's signs (a DRecord); on every --aug_interval-th step adjust p (a collective)."""
        scores = d.real_logits - d.fake_logits if self.relative else d.real_logits
        self.pending[0] += scores.detach().sign().sum()
        self.pending[1] += scores.numel()
        if step % self.interval == 0:
            self.adjust(accelerator)

    def adjust(self, accelerator):
        """r_t from every rank's signs (one all-reduce), then p: the same arithmetic on the same numbers everywhere."""
        total = accelerator.reduce(self.pending, "sum")  # a copy; integers in float64: exact in any order
        self.pending.zero_()
        self.since_log += total
        if self.target is not None:
            r_t = total[0] / total[1].clamp(min=1)
            step = torch.sign(r_t - self.target).float() * self.speed
            self.pipe.p.copy_((self.pipe.p + step).clamp(min=0))

    def log_row(self):
        """{"aug_p": p now, "aug_rt": r_t over the adjustments since the last row} (a host sync)."""
        signs, count = self.since_log.tolist()
        self.since_log.zero_()
        return {"aug_p": float(self.pipe.p), **({"aug_rt": signs / count} if count else {})}

    def state_dict(self, accelerator):
        """p and the signs counted since the last adjustment, over all ranks (a collective), for gan.json."""
        pending = accelerator.reduce(self.pending, "sum").tolist()  # a copy: this rank's own sums stay
        return {"p": float(self.pipe.p), "signs": pending[0], "count": pending[1]}

    def load_state_dict(self, state, p_fixed=None):
        """Resume: p (unless --aug_p fixes it) and the pending signs, kept on rank 0 so the next sum is the same."""
        self.pipe.p.fill_(state["p"] if p_fixed is None else p_fixed)
        if self.rank == 0:
            self.pending.copy_(torch.tensor([state["signs"], state["count"]], dtype=torch.float64))


def valid_state(state):
    """Whether gan.json's "augment" entry is one this module wrote (it is untrusted input)."""
    if not isinstance(state, dict) or set(state) != {"p", "signs", "count"}:
        return False
    p, signs, count = state["p"], state["signs"], state["count"]
    numbers = all(type(v) in (int, float) and math.isfinite(v) for v in (p, signs, count))
    return numbers and 0 <= p <= 1e6 and 0 <= count <= MAX_COUNT and abs(signs) <= count \
        and float(signs).is_integer() and float(count).is_integer()


def make_augment(args, accelerator, global_batch, meta=None):
    """(augment callable or None, AdaptiveAugment or None) for --aug; with `meta` (a checkpoint's gan.json),
    ADA resumes its p and pending signs."""
    if args.aug == "diffaug":
        policy = parse_policy(args.diffaug or DEFAULT_POLICY)
        return (lambda x: diff_augment(x, policy)), None
    if args.aug != "ada":
        return None, None
    ada = AdaptiveAugment(args.aug_pipe, args.seed, accelerator.device, accelerator.process_index,
                          None if args.aug_p is not None else args.aug_target, args.aug_interval, args.aug_kimg,
                          global_batch, relative=args.loss == "rpgan", p=args.aug_p or 0.0)
    if meta and "augment" in meta:
        ada.load_state_dict(meta["augment"], args.aug_p)
    elif meta:
        accelerator.print(f"note: the checkpoint has no ADA state; p starts at {float(ada.p):g}")
    return ada, ada


ADA_DEFAULTS = {"aug_pipe": DEFAULT_PIPE, "aug_target": 0.6, "aug_interval": 4, "aug_kimg": 500.0}  # StyleGAN2-ADA's


def resolve_aug(parser, args):
    """--aug from --diffaug when left out; ADA's options filled, checked, and refused without --aug ada."""
    if args.aug is None:
        args.aug = "diffaug" if args.diffaug else "none"
    if args.diffaug and args.aug != "diffaug":
        parser.error(f"--diffaug {args.diffaug} is DiffAugment's policy, and --aug {args.aug} does not use it; "
                     "pass --aug diffaug or drop --diffaug")
    given = [name for name in ("aug_pipe", "aug_p", "aug_target", "aug_interval", "aug_kimg")
             if getattr(args, name) is not None]
    if args.aug != "ada":
        if given:
            parser.error(f"--{given[0]} is an option of --aug ada, not --aug {args.aug}; pass --aug ada or drop it")
        return
    if args.aug_p is not None and args.aug_target is not None:
        parser.error("--aug_p fixes p and --aug_target adapts it; give one of the two")
    for name, value in ADA_DEFAULTS.items():
        if getattr(args, name) is None and not (name == "aug_target" and args.aug_p is not None):
            setattr(args, name, value)
    if args.aug_p is not None and not 0 <= args.aug_p <= 1:
        parser.error(f"--aug_p must be in [0, 1], got {args.aug_p}")
    if args.aug_target is not None and not 0 <= args.aug_target <= 1:
        parser.error(f"--aug_target must be in [0, 1] (a mean of signs that D gets right), got {args.aug_target}")
    if args.aug_interval < 1:
        parser.error(f"--aug_interval must be >= 1, got {args.aug_interval}")
    if not 0 < args.aug_kimg < math.inf:
        parser.error(f"--aug_kimg must be > 0 and finite, got {args.aug_kimg}")
