"""Mixed precision: bf16 trains on the CPU; the fp16 GradScaler path is driven with a real CPU GradScaler."""
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from conftest import run_here, train_rows

from gan_dist.networks.losses import d_loss
from gan_dist.networks.models import GANConfig, build_models
from gan_dist.training.step import GANStep, adam


def prepared(scale):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    G, D = build_models(GANConfig("mlp", latent_dim=8, img_size=8, channels=1))
    opt_G, opt_D = (adam(n.parameters(), 2e-4, (0.5, 0.999), accelerator.device) for n in (G, D))
    G, D, opt_G, opt_D = accelerator.prepare(G, D, opt_G, opt_D)
    # Accelerate makes no scaler on the CPU (fp16 is a no-op there); give it one real GradScaler
    # and wrap both optimizers around it, as prepare() does with fp16 on CUDA.
    # (scale None: no scaler, the optimizers as prepare() left them)
    if scale is None:
        return accelerator, G, D, opt_G, opt_D, None
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    accelerator.scaler = scaler
    opt_G, opt_D = (AcceleratedOptimizer(o.optimizer, device_placement=False, scaler=scaler) for o in (opt_G, opt_D))
    return accelerator, G, D, opt_G, opt_D, scaler


def test_fp16_scaler_updates_and_reports_unscaled_gradient_norms():
    accelerator, G, D, opt_G, opt_D, scaler = prepared(scale=1024.0)
    real, z = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randn(16, 8)
    before = [p.detach().clone() for p in D.parameters()]
    with torch.no_grad():
        fake = G(z)  # what G draws before its own update (train mode: batch statistics)
    d, g = GANStep(accelerator, G, D, opt_G, opt_D)(real, z, with_norms=True)
    assert d.skipped.item() == 0 and g.skipped.item() == 0 and scaler.get_scale() == 1024.0
    assert any(not torch.equal(a, b) for a, b in zip(before, D.parameters()))
    # the logged norm is the true one: recompute D's gradient without any scaling
    D.zero_grad()
    for p, b in zip(D.parameters(), before):
        p.data.copy_(b)
    d_loss(D(real), D(fake)).backward()
    true_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in D.parameters()]))
    assert torch.isclose(d.grad_norm, true_norm, rtol=1e-3)


def test_fp16_overflow_skips_the_update_and_backs_off_the_shared_scale():
    accelerator, G, D, opt_G, opt_D, scaler = prepared(scale=1024.0)
    real, z = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randn(16, 8)
    real[3, 0, 4, 4] = float("inf")  # an overflowed activation: D's gradients become non-finite
    before_D = [p.detach().clone() for p in D.parameters()]
    before_G = [p.detach().clone() for p in G.parameters()]
    d, g = GANStep(accelerator, G, D, opt_G, opt_D)(real, z)
    assert d.skipped.item() == 1 and g.skipped.item() == 0  # D's update skipped; G's (through a finite D) applied
    assert all(torch.equal(a, b) for a, b in zip(before_D, D.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_G, G.parameters()))
    assert scaler.get_scale() == 512.0  # the one shared scale backed off once
    assert opt_D.scaler is opt_G.scaler is accelerator.scaler


def test_bf16_trains_on_cpu(tmp_path, digits16):
    out = tmp_path / "run"
    r = run_here("gan_dist.train", "--cpu", "--mixed_precision", "bf16", "--data", digits16, "--img_size", 16,
                 "--channels", 1, "--batch_size", 32, "--n_cpu", 0, "--max_train_steps", 4, "--log_steps", 2,
                 "--output_dir", out, "--report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mixed precision bf16" in r.stdout
    assert all(0 < row["D_real"] < 1 and row["step_skipped"] == 0 for row in train_rows(out))


def test_without_a_scaler_the_step_calls_torch_directly_and_matches_accelerates_wrappers(fresh_state, monkeypatch):
    calls = {"backward": 0, "step": 0, "zero_grad": 0}

    def counted(name, method):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(Accelerator, "backward", counted("backward", Accelerator.backward))
    for name in ("step", "zero_grad"):
        monkeypatch.setattr(AcceleratedOptimizer, name, counted(name, getattr(AcceleratedOptimizer, name)))

    def train(plain):
        accelerator, G, D, opt_G, opt_D, _ = prepared(scale=None)
        step = GANStep(accelerator, G, D, opt_G, opt_D, loss="rpgan", plain=plain)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            step(torch.rand(16, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(16, 8, generator=gen), 1.0, 1.0)
        return step, [p.detach().clone() for p in (*G.parameters(), *D.parameters())]
    auto, plain_weights = train(plain=None)
    assert auto.plain and calls == {"backward": 0, "step": 0, "zero_grad": 0}  # no wrapper on the hot path
    wrapped, wrapped_weights = train(plain=False)
    assert not wrapped.plain and calls == {"backward": 6, "step": 6, "zero_grad": 6}
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, wrapped_weights))  # bit for bit
