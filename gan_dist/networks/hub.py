"""The generator as a Hugging Face model: a folder of config.json + model.safetensors, local or on the Hub.

    G = HubGenerator.from_pretrained("exports/digits")     # or "user/name" on the Hub
    images = G(torch.randn(16, G.gan_config.latent_dim))  # (16, C, H, W) in [-1, 1]
    images = G(torch.randn(2, G.gan_config.latent_dim), G.class_ids(["3", "7"]))  # class-conditional (--cond)

Folders are written by `python -m gan_dist.export`. config.json comes from elsewhere, so
its sizes are checked (and G's parameters counted on the meta device) before anything is
allocated, and the weights' names and shapes are compared with G's before they are read.
"""
import dataclasses
import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download, snapshot_download
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from gan_dist.budgets import BudgetError
from gan_dist.networks.conditioning import class_ids
from gan_dist.networks.figures import check_params
from gan_dist.networks.models import GANConfig, build_models

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TAGS = ["gan", "gan-dist", "unconditional-image-generation"]
HUB_PREFIX = "hf://"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LIMITS = {"latent_dim": 8192, "img_size": 1024, "channels": 4, "base_width": 4096}
DEFAULT_LIMIT = 65536  # integer fields without their own limit


class HubError(Exception):
    """A model folder or Hub id that cannot be loaded; the message says why."""


def check_gan_config(raw):
    """A GANConfig from config.json's "gan_config", refused (HubError) if a field is unknown, mistyped or too large."""
    if not isinstance(raw, dict):
        raise HubError(f"{CONFIG}: \"gan_config\" must be an object, got {type(raw).__name__}")
    raw = {("pacgan" if k == "pack" else k): v for k, v in raw.items()}  # PacGAN's older name
    fields = {f.name: f.default for f in dataclasses.fields(GANConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise HubError(f"{CONFIG}: unknown gan_config fields {unknown}; the model needs a newer gan-dist")
    for name, value in raw.items():
        default, limit = fields[name], LIMITS.get(name, DEFAULT_LIMIT)
        if name == "blocks" and isinstance(value, list):  # one count per stage; GANConfig checks the rest
            if len(value) > 16 or not all(type(v) is int and 0 <= v <= limit for v in value):
                raise HubError(f"{CONFIG}: gan_config.blocks = {value!r}; expected an integer or a list of at most "
                               f"16 integers from 0 to {limit}")
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise HubError(f"{CONFIG}: gan_config.{name} = {value!r}; expected true or false")
        if type(default) is int and (type(value) is not int or not 1 <= value <= limit):
            raise HubError(f"{CONFIG}: gan_config.{name} = {value!r}; expected an integer from 1 to {limit}")
        if isinstance(default, str) and not isinstance(value, str):
            raise HubError(f"{CONFIG}: gan_config.{name} = {value!r}; expected a string")
    try:
        cfg = GANConfig(**raw)
    except ValueError as e:
        raise HubError(f"{CONFIG}: {e}") from None
    try:
        check_params(cfg, where=f"{CONFIG}: ")  # shapes only, on the meta device: nothing is allocated
    except BudgetError as e:
        raise HubError(str(e)) from None
    return cfg


def load_weights(net, path):
    """Load safetensors weights into net after checking that names and shapes match exactly."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    try:
        with safe_open(str(path), "pt") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise HubError(f"{path}: not a readable safetensors file ({e})") from None
    if got != want:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise HubError(f"{path.name} does not fit {CONFIG}: missing {missing[:3]}, unexpected {extra[:3]}, "
                       f"other shapes {shapes[:3]}")
    load_model(net, str(path), strict=True)


# a copy of TAGS: the mixin appends its own tags to the list it is given
class HubGenerator(nn.Module, PyTorchModelHubMixin, library_name="gan-dist", tags=list(TAGS),
                   pipeline_tag="unconditional-image-generation"):
    """G of a gan-dist run, loadable with `from_pretrained` and savable with `save_pretrained`/`push_to_hub`.

    Its weights file holds G's own state dict (the same names as a training checkpoint's). A class-conditional G
    (gan_config.classes) takes class ids too: `class_ids` turns class names into them.
    """

    def __init__(self, gan_config: dict):
        super().__init__()
        self.gan_config = check_gan_config(gan_config)
        self.net = build_models(self.gan_config)[0]

    def forward(self, z, c=None):  # (B, latent), class ids (B,) for a conditional G -> (B, C, H, W) in [-1, 1]
        return self.net(z) if c is None else self.net(z, c)

    @property
    def classes(self):
        """The class names a conditional G draws (empty for an unconditional one)."""
        return self.gan_config.classes

    def class_ids(self, names):
        """Class names (or numbers) -> a tensor of class ids; ValueError names one that is not a class."""
        return torch.tensor(class_ids(self.classes, names), device=next(self.parameters()).device)

    def _save_pretrained(self, save_directory):
        save_model(self.net, str(Path(save_directory) / WEIGHTS))

    @classmethod
    def _from_pretrained(cls, *, model_id, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, map_location="cpu", gan_config=None, **hub_kwargs):
        # hub_kwargs: what older huggingface_hub versions also pass (proxies, resume_download); unused
        if gan_config is None:
            raise HubError(f"{model_id}: {CONFIG} is missing or has no \"gan_config\"")
        model = cls(gan_config)
        if Path(model_id).is_dir():
            path = Path(model_id) / WEIGHTS
        else:  # safetensors only: a Hub repo's pickled weights are never loaded
            path = Path(hf_hub_download(model_id, WEIGHTS, revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, token=token,
                                        local_files_only=local_files_only))
        if not path.is_file():
            raise HubError(f"{model_id} has no {WEIGHTS}")
        load_weights(model.net, path)
        return model.to(map_location).eval()


def read_config(folder):
    """config.json of an exported folder as a dict (HubError if absent or not a JSON object)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise HubError(f"{folder} has no {CONFIG}; pass a folder written by `python -m gan_dist.export` "
                       "(or a training checkpoint)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise HubError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "gan_config" not in config:
        raise HubError(f"{path}: no \"gan_config\"; this is not a gan-dist model")
    return config


def model_folder(spec, token=None):
    """A local exported folder as is; `hf://user/name` or `user/name` (not a local path) via the Hub cache."""
    spec = str(spec)
    if not spec.startswith(HUB_PREFIX) and Path(spec).exists():
        return Path(spec)
    repo_id = spec.removeprefix(HUB_PREFIX)
    if not REPO_ID.fullmatch(repo_id):
        raise HubError(f"{spec}: no such local path, and not a Hub id of the form user/name")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG, WEIGHTS], token=token))
    except (OSError, ValueError) as e:  # offline, not found, gated, bad id: all subclasses of these
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{spec}: no such local path, and no model {repo_id} could be fetched from the Hugging Face "
                       f"Hub ({type(e).__name__}: {reason}); check the id, the network, HF_HUB_OFFLINE and "
                       "HF_TOKEN") from None


def load_exported(spec, ema=None, device="cpu"):
    """G from an exported folder or Hub id: (folder, G in eval mode, whether it holds EMA weights, latent_dim).

    ema: True/False insist on the EMA/trained weights; an export holds one of them (config.json "weights").
    """
    folder = model_folder(spec)
    config = read_config(folder)
    is_ema = config.get("weights") == "G_ema"
    if ema is not None and ema != is_ema:
        held = "the EMA weights (G_ema)" if is_ema else "the trained G"
        raise HubError(f"{spec} holds {held} only; drop --ema/--no-ema, or export the other with "
                       "`python -m gan_dist.export --weights ...`")
    check_gan_config(config["gan_config"])
    G = HubGenerator.from_pretrained(folder, map_location=device)
    return folder, G, is_ema, G.gan_config.latent_dim
