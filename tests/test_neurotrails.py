"""NeuroTrails (vision part): formulas, structure, metrics, checkpoints and data (neurotrails.md §6)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402

from datamodules import DigitsDataModule, ImageClassificationDataModule  # noqa: E402
from modules.neurotrails import NeuroTrailsMLP, NeuroTrailsResNet, ensemble_logits, multihead_loss  # noqa: E402
from trainer.metrics import (  # noqa: E402
    EnsembleDisagreement,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    pairwise_disagreement_matrix,
)
from trainer.vision import resnet_bottleneck_stack, wrn_stack  # noqa: E402


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _quiet_trainer(**kw) -> pl.Trainer:
    kw.setdefault("logger", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


# --------------------------------------------------------------------------- §6 loss and ensembling


def test_loss_is_sum_of_head_ce_and_ensemble_averages_logits():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # [H=2, B=1, C=2]
    y = torch.tensor([0])
    total, per_head = multihead_loss(logits, y)
    assert per_head.tolist() == pytest.approx([0.126928, 1.313262], abs=1e-6)
    assert total.item() == pytest.approx(1.440190, abs=1e-6)
    zbar = ensemble_logits(logits)
    assert zbar.tolist() == [[1.0, 0.5]]
    assert F.cross_entropy(zbar, y).item() == pytest.approx(0.474077, abs=1e-6)


# --------------------------------------------------------------------------- §6 disagreement


def test_disagreement_example_and_code_variant():
    preds = torch.tensor([[0, 1, 2, 0], [0, 1, 1, 0], [1, 1, 2, 0]])
    counts = pairwise_disagreement_matrix(preds)
    assert counts.tolist() == [[0, 1, 1], [1, 0, 2], [1, 2, 0]]
    metric = EnsembleDisagreement(num_members=3)
    metric.update(preds[:, :3])  # accumulate over two batches
    metric.update(preds[:, 3:])
    out = metric.compute()
    assert out["mean"].item() == pytest.approx(1 / 3)
    assert out["code"].item() == pytest.approx(2 / 9)
    assert torch.allclose(out["matrix"], counts / 4)
    # logits are reduced by argmax
    onehot = F.one_hot(preds, 3).float()
    metric2 = EnsembleDisagreement(num_members=3)
    metric2.update(onehot)
    assert metric2.compute()["mean"].item() == pytest.approx(1 / 3)
    single = EnsembleDisagreement(num_members=1)
    single.update(preds[:1])
    assert single.compute()["mean"].item() == 0.0


# --------------------------------------------------------------------------- ECE and NLL


def test_ece_and_nll_hand_example():
    # confidences 0.95 (right), 0.75 (wrong), 0.65 (right), 0.55 (right); away from bin edges
    probs = torch.tensor([[0.95, 0.05], [0.75, 0.25], [0.35, 0.65], [0.55, 0.45]])
    y = torch.tensor([0, 1, 1, 0])
    ece = ExpectedCalibrationError(n_bins=5, from_logits=False)
    ece.update(probs[:2], y[:2])
    ece.update(probs[2:], y[2:])
    # bins (0.4,0.6]: |1-0.55| ; (0.6,0.8]: |1-(0.75+0.65)| ; (0.8,1]: |1-0.95|  ->  (0.45+0.4+0.05)/4
    assert ece.compute().item() == pytest.approx(0.225)
    ece1 = ExpectedCalibrationError(n_bins=1, from_logits=False)
    ece1.update(probs, y)
    assert ece1.compute().item() == pytest.approx(abs(3 - (0.95 + 0.75 + 0.65 + 0.55)) / 4)
    nll = NegativeLogLikelihood(from_logits=False)
    nll.update(probs, y)
    expected = -(math.log(0.95) + math.log(0.25) + math.log(0.65) + math.log(0.55)) / 4
    assert nll.compute().item() == pytest.approx(expected)
    nll_logits = NegativeLogLikelihood()
    nll_logits.update(probs.log(), y)
    assert nll_logits.compute().item() == pytest.approx(expected)


def test_ece_matches_torchmetrics_on_random_logits():
    from torchmetrics.classification import MulticlassCalibrationError

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=gen) * 2
    y = torch.randint(0, 7, (500,), generator=gen)
    ours = ExpectedCalibrationError(n_bins=15)
    ours.update(logits, y)
    ref = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")
    ref.update(logits.softmax(-1), y)
    assert ours.compute().item() == pytest.approx(ref.compute().item(), abs=1e-5)


# --------------------------------------------------------------------------- §6 structure


def test_digits_arm_parameter_counts_by_hand():
    # Linear(a, b) has a*b + b parameters.
    single = (64 * 256 + 256) + 2 * (256 * 256 + 256) + (256 * 10 + 10)  # 150,794
    trunk = (64 * 256 + 256) + (256 * 256 + 256)  # 82,432
    head = (256 * 256 + 256) + (256 * 10 + 10)  # 68,362
    assert _n_params(NeuroTrailsMLP(num_heads=1)) == single == 150_794
    treenet = NeuroTrailsMLP()
    assert _n_params(treenet) == trunk + 3 * head == 287_518
    assert _n_params(treenet.net.trunk) == trunk
    assert _n_params(NeuroTrailsMLP(ensemble_mode="independent")) == 3 * single == 452_382


def test_full_size_nets_match_published_parameter_counts():
    wrn = wrn_stack(28, 10, num_classes=100)
    assert len(wrn.blocks) == 12
    assert _n_params(wrn.as_module()) == 36_536_884  # WRN-28-10 with a 100-class head
    assert _n_params(wrn_stack(28, 10, num_classes=10).as_module()) == 36_479_194  # the published CIFAR-10 count
    r50 = resnet_bottleneck_stack()
    assert len(r50.blocks) == 16
    assert _n_params(r50.as_module()) == 25_557_032  # ResNet-50 (He et al.; torchvision's count)


def _head_params(model, k):
    return list(model.net.heads[k].parameters())


@pytest.mark.parametrize(
    "make",
    [
        lambda: NeuroTrailsMLP(num_heads=3, hidden=16),
        lambda: NeuroTrailsMLP(num_heads=3, hidden=16, ensemble_mode="independent"),
        lambda: NeuroTrailsResNet(**NeuroTrailsResNet.unit_test_params()),
    ],
    ids=["mlp_shared", "mlp_independent", "wrn_tiny_shared"],
)
def test_heads_are_separate_and_freshly_initialised(make):
    torch.manual_seed(0)
    model = make()
    x = torch.rand(4, 3, 16, 16) if isinstance(model, NeuroTrailsResNet) else torch.rand(4, 64)
    y = torch.tensor([0, 1, 2, 3])
    h = model.num_heads
    # Heads' initial weights differ (separate random init, not copies).
    for i in range(h):
        for j in range(i + 1, h):
            pi, pj = _head_params(model, i), _head_params(model, j)
            assert any(not torch.equal(a, b) for a, b in zip(pi, pj) if a.dim() >= 2)
    # Each head's loss gives zero gradient to the other heads' parameters.
    for k in range(h):
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model(x)[k], y).backward()
        assert any(p.grad.abs().sum() > 0 for p in _head_params(model, k))
        for j in range(h):
            if j != k:
                assert all(p.grad.abs().sum() == 0 for p in _head_params(model, j))
        trunk = list(model.net.trunk.parameters())
        if trunk:
            assert any(p.grad.abs().sum() > 0 for p in trunk)  # shared parameters = trunk
    # Every parameter is either in the trunk or in exactly one head.
    ids = [id(p) for p in model.net.trunk.parameters()] + [id(p) for k in range(h) for p in _head_params(model, k)]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_independent_mode_shares_nothing_and_shared_mode_splits_at_blocks():
    ens = NeuroTrailsMLP(num_heads=3, ensemble_mode="independent")
    assert _n_params(ens.net.trunk) == 0
    tiny = dict(arch="wrn28_10", depth=16, width=1, num_classes=10)  # 6 residual blocks
    shared = NeuroTrailsResNet(num_heads=2, blocks_in_head=4, **tiny)
    n_blocks = lambda seq: sum(type(m).__name__ == "WideBasicBlock" for m in seq.children())  # noqa: E731
    assert n_blocks(shared.net.trunk) == 2 and all(n_blocks(hd) == 4 for hd in shared.net.heads)
    single = wrn_stack(16, 1, 10).as_module()
    assert _n_params(NeuroTrailsResNet(num_heads=1, blocks_in_head=4, **tiny)) == _n_params(single)
    full = NeuroTrailsResNet(num_heads=2, ensemble_mode="independent", **tiny)
    assert _n_params(full.net.trunk) == 0 and _n_params(full) == 2 * _n_params(single)


def test_paper_default_splits():
    # Constructing full WRN-28-10 multi-head nets is slow; check the resolution of the defaults only.
    from modules.neurotrails import RESNET_ARCHS

    assert RESNET_ARCHS["wrn28_10"] == (8, 100)
    assert RESNET_ARCHS["resnet50"] == (10, 1000)


def test_mask_set_covers_every_linear_and_conv_of_every_head():
    model = NeuroTrailsResNet(**NeuroTrailsResNet.unit_test_params())
    names = list(model.mask_set())
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert names == [f"{n}.weight" for n in convs]
    for k in range(model.num_heads):
        assert any(n.startswith(f"net.heads.{k}.") for n in names)
    assert all(entry.mask.all() for entry in model.mask_set().values())  # dense until a callback sparsifies


# --------------------------------------------------------------------------- tiny nets forward/backward


@pytest.mark.parametrize(
    "kwargs, size",
    [
        (dict(arch="wrn28_10", depth=10, width=2, blocks_in_head=2, num_classes=5), 32),
        (dict(arch="resnet50", stage_blocks=(1, 1, 1, 1), width=4, blocks_in_head=2, num_classes=5), 32),
        (dict(arch="resnet50", stage_blocks=(1, 1, 1, 1), width=4, num_classes=5, ensemble_mode="independent"), 32),
    ],
    ids=["wrn", "resnet", "resnet_independent"],
)
def test_tiny_resnets_forward_backward(kwargs, size):
    torch.manual_seed(0)
    model = NeuroTrailsResNet(num_heads=3, **kwargs)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (3, 2, 5)
    loss, _ = multihead_loss(out, torch.tensor([1, 4]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_hparams_hold_every_init_argument():
    import inspect

    for cls in (NeuroTrailsMLP, NeuroTrailsResNet):
        model = cls(**cls.unit_test_params())
        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert set(names) <= set(model.hparams), cls


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (NeuroTrailsMLP, dict(num_heads=1, hidden=16)),
        (NeuroTrailsMLP, dict(num_heads=3, hidden=16)),
        (NeuroTrailsMLP, dict(num_heads=3, hidden=16, ensemble_mode="independent")),
        (NeuroTrailsResNet, dict(NeuroTrailsResNet.unit_test_params())),
        (NeuroTrailsResNet, dict(NeuroTrailsResNet.unit_test_params(), ensemble_mode="independent")),
    ],
    ids=["single", "treenet", "full_ensemble", "wrn_shared", "wrn_independent"],
)
def test_save_load_round_trip_gives_identical_outputs(tmp_path, cls, kwargs):
    pl.seed_everything(0)
    model = cls(**kwargs)
    is_image = cls is NeuroTrailsResNet
    dm = ImageClassificationDataModule(**ImageClassificationDataModule.unit_test_params()) if is_image else DigitsDataModule(batch_size=32)
    # sparsify one mask by hand so that the buffers' persistence is tested too
    name, entry = next(iter(model.mask_set().items()))
    entry.mask.view(-1)[::2] = False
    with torch.no_grad():
        entry.weight.mul_(entry.mask)
    trainer = _quiet_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    model.eval()
    loaded.eval()
    x = torch.rand(5, 3, 16, 16) if is_image else torch.rand(5, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert torch.equal(loaded.mask_set()[name].mask, entry.mask)
    assert not loaded.mask_set()[name].mask.all()
    assert dict(loaded.hparams) == dict(model.hparams)


# --------------------------------------------------------------------------- logging


def test_logged_scalars(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    pl.seed_everything(0)
    model = NeuroTrailsMLP(num_heads=3, hidden=32)
    trainer = _quiet_trainer(
        max_epochs=1, limit_train_batches=3, logger=TensorBoardLogger(tmp_path, name="nt"), log_every_n_steps=1
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    keys = set(trainer.callback_metrics)
    expected = {"train/loss", "val/loss_ensemble", "val/acc_ensemble", "val/disagreement", "val/disagreement_code", "val/nll", "val/ece"}
    expected |= {f"train/loss_head{k}" for k in range(3)} | {f"val/acc_head{k}" for k in range(3)}
    assert expected <= keys
    m = trainer.callback_metrics
    assert m["val/disagreement_code"].item() == pytest.approx(2 / 3 * m["val/disagreement"].item(), abs=1e-6)
    assert m["val/nll"].item() == pytest.approx(m["val/loss_ensemble"].item(), abs=1e-5)
    assert m["train/loss"].item() == pytest.approx(sum(m[f"train/loss_head{k}"].item() for k in range(3)), rel=1e-5)
    results = trainer.test(model, DigitsDataModule(batch_size=32), verbose=False)[0]
    assert {"test/acc_ensemble", "test/disagreement", "test/nll", "test/ece"} <= set(results)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trainer.logger.log_dir))
    events.Reload()
    assert "val/disagreement_matrix" in events.Tags()["images"]


# --------------------------------------------------------------------------- data


def test_digits_datamodule_split_and_seeded_order(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dm = DigitsDataModule(batch_size=64)
    assert dm.train_set is None  # constructor is cheap
    dm.setup("fit")
    assert len(dm.train_set) == 1347 and len(dm.test_set) == 450
    x, y = dm.train_set.tensors
    assert x.min() >= 0 and x.max() <= 1 and x.shape[1] == 64
    counts = torch.bincount(dm.test_set.tensors[1])
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: 25% of 174..183 per class
    order = lambda: torch.cat([b[1] for b in dm.train_dataloader()])  # noqa: E731
    assert torch.equal(order(), order())
    assert len(dm.val_dataloader().dataset) == 450


def _write_folder(root, classes=3, per_class=4, size=(20, 24)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")


def test_image_folder_datamodule(tmp_path):
    _write_folder(tmp_path)
    dm = ImageClassificationDataModule(root=str(tmp_path), image_size=16, batch_size=4, crop_padding=2)
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.train_set) == 12 and len(dm.val_set) == 12
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 0, 0]
    # Train augmentation is a pure function of (seed, epoch, index).
    loader = dm.train_dataloader()
    a = torch.cat([b[0] for b in loader])
    b = torch.cat([b[0] for b in loader])
    assert torch.equal(a, b)
    loader.sampler.set_epoch(1)
    c = torch.cat([b[0] for b in loader])
    assert not torch.equal(a, c)
    eval_a = dm.val_set[0][0]
    assert torch.equal(eval_a, dm.val_set[0][0])
    # ImageNet-style transforms give the requested size too.
    inet = ImageClassificationDataModule(root=str(tmp_path), augment="imagenet", image_size=12, batch_size=4)
    inet.setup("fit")
    assert inet.train_set[0][0].shape == (3, 12, 12) and inet.val_set[0][0].shape == (3, 12, 12)


def test_image_datamodule_constructor_touches_no_data(tmp_path):
    dm = ImageClassificationDataModule(dataset_name="uoft-cs/cifar100")
    assert dm.train_set is None
    ImageClassificationDataModule(root=str(tmp_path / "does_not_exist"))
    with pytest.raises(ValueError):
        ImageClassificationDataModule()
    with pytest.raises(ValueError):
        ImageClassificationDataModule(root="a", dataset_name="b")
    with pytest.raises(FileNotFoundError):
        ImageClassificationDataModule(root=str(tmp_path / "does_not_exist")).setup("fit")


def test_image_datamodule_digits_folder(tmp_path):
    dm = ImageClassificationDataModule(root=str(tmp_path / "digits"), make_digits_folder=True, digits_per_class=2, image_size=16)
    dm.setup("fit")
    assert dm.num_classes == 10 and len(dm.train_set) == 20 and len(dm.val_set) == 20
    assert dm.train_set[0][0].shape == (3, 16, 16)


# --------------------------------------------------------------------------- LM part (§2, §3, §6)

import re  # noqa: E402

from modules.neurotrails import NeuroTrailsAveragedLM, NeuroTrailsLM  # noqa: E402
from trainer.text import LLAMA_SHAPES, build_causal_lm, causal_lm_loss  # noqa: E402

LM_INCLUDE = (r"embed_tokens\.weight$", r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", r"lm_head\.weight$")


def _tiny_lm(**kw) -> NeuroTrailsLM:
    torch.manual_seed(0)
    return NeuroTrailsLM(**{**NeuroTrailsLM.unit_test_params(), "num_hidden_layers": 3, "num_heads": 3, **kw})


def test_lm_shared_params_are_embedding_plus_first_blocks():
    m = _tiny_lm(blocks_in_head=2)  # L = 3, b = 2
    trunk = {n for n, _ in m.net.trunk.named_parameters()}
    assert trunk == {"embed_tokens.weight"} | {n for n in trunk if n.startswith("layers.0.")}
    assert len(m.net.trunk.layers) == 1 and all(len(h.layers) == 2 for h in m.net.heads)
    ref = build_causal_lm({**m.config_kwargs, "num_hidden_layers": 1})
    assert _n_params(m.net.trunk) == _n_params(ref) - _n_params(ref.lm_head) - _n_params(ref.model.norm)


def test_lm_head_gradients_are_isolated():
    m = _tiny_lm(blocks_in_head=1)
    x = torch.randint(0, 512, (2, 8))
    for k in range(3):
        m.zero_grad(set_to_none=True)
        m(x)[k].sum().backward()
        for j, head in enumerate(m.net.heads):
            grads = [p.grad for p in head.parameters()]
            if j == k:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_lm_heads_are_freshly_initialised():
    m = _tiny_lm(blocks_in_head=1)
    w = [h.lm_head.weight for h in m.net.heads]
    q = [h.layers[0].self_attn.q_proj.weight for h in m.net.heads]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(w[i], w[j]) and not torch.equal(q[i], q[j])


def test_lm_mask_set_contains_embedding_and_every_lm_head():
    m = _tiny_lm(blocks_in_head=1)
    names = [n for n in m.mask_set() if any(re.search(p, n) for p in LM_INCLUDE)]
    assert "net.trunk.embed_tokens.weight" in names
    assert all(f"net.heads.{k}.lm_head.weight" in names for k in range(3))
    assert set(names) == set(m.mask_set())  # every 2-D weight is selected
    assert all(e.weight.dim() == 2 for e in m.mask_set().values())


def test_lm_param_counts_130m_on_meta():
    def count(**kw) -> int:
        with torch.device("meta"):
            return _n_params(NeuroTrailsLM(shape="llama_130m", **kw).net)

    single = count(num_heads=1, blocks_in_head=0)
    treenet = count(num_heads=3, blocks_in_head=8)
    full = count(num_heads=3, ensemble_mode="independent")
    assert round(single / 1e6) == 134  # §3 table
    assert round(treenet / 1e6) == 297
    assert round(full / 1e6) == 402
    assert full == 3 * single


def test_lm_h1_split_equals_unsplit_hf_llama():
    """H = 1: the split forward (manual RoPE and causal mask) gives the HF model's logits exactly."""
    for b in (0, 1, 3):
        m = _tiny_lm(num_heads=1, blocks_in_head=b).eval()
        ref = build_causal_lm(m.config_kwargs).eval()
        layers = [*m.net.trunk.layers, *m.net.heads[0].layers]
        sd = {"model.embed_tokens.weight": m.net.trunk.embed_tokens.weight,
              "model.norm.weight": m.net.heads[0].norm.weight, "lm_head.weight": m.net.heads[0].lm_head.weight}  # fmt: skip
        for i, layer in enumerate(layers):
            sd.update({f"model.layers.{i}.{n}": p for n, p in layer.named_parameters()})
        ref.load_state_dict(sd, strict=True)
        x = torch.randint(0, 512, (2, 20))
        with torch.no_grad():
            torch.testing.assert_close(m(x)[0], ref(x).logits, rtol=0, atol=1e-5)
            # a padding mask is honoured the same way
            am = torch.ones_like(x)
            am[0, :5] = 0
            torch.testing.assert_close(m.net(x, am)[0], ref(x, attention_mask=am).logits, rtol=0, atol=1e-5)


def test_lm_loss_is_sum_over_heads():
    m = _tiny_lm(blocks_in_head=1)
    batch = {"input_ids": torch.randint(0, 512, (2, 8)), "labels": torch.randint(0, 512, (2, 8))}
    logits = m(batch["input_ids"])
    expect = sum(causal_lm_loss(z, batch["labels"]) for z in logits)
    m.log = lambda *a, **k: None
    torch.testing.assert_close(m.training_step(batch, 0), expect)


@pytest.mark.parametrize("mode", ["shared", "independent"])
def test_lm_export_averaged_logits_save_load_round_trip(tmp_path, mode):
    m = _tiny_lm(blocks_in_head=1, ensemble_mode=mode).eval()
    exported = m.export_averaged_logits()
    assert type(exported) is NeuroTrailsAveragedLM
    x = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), m(x).mean(0), rtol=0, atol=0)
        exported.save(str(tmp_path / "ens.pt"))
        loaded = NeuroTrailsAveragedLM.load(str(tmp_path / "ens.pt"))
        assert torch.equal(loaded(x), exported(x))


def test_lm_plays_fit_logs_ppl_and_disagreement(tmp_path):
    from datamodules import TextCorpusDataModule

    pl.seed_everything(0)
    m = NeuroTrailsLM(**NeuroTrailsLM.unit_test_params())
    dm = TextCorpusDataModule(**TextCorpusDataModule.unit_test_params())
    trainer = _quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0,
                             default_root_dir=str(tmp_path))
    trainer.fit(m, datamodule=dm)
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/loss_head0", "val/loss_ensemble", "val/ppl_ensemble", "val/ppl_head1",
                "val/disagreement", "val/disagreement_code"):  # fmt: skip
        assert key in logged and math.isfinite(float(logged[key])), key
    assert float(logged["val/ppl_ensemble"]) == pytest.approx(math.exp(float(logged["val/loss_ensemble"])), rel=1e-4)
    assert float(logged["val/disagreement_code"]) == pytest.approx(0.5 * float(logged["val/disagreement"]), abs=1e-6)
