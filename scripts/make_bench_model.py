#!/usr/bin/env python3
"""A random checkpoint of Qwen2.5-0.5B's shape for benchmarks (run with the toolchain venv's
python): qwen2, 24 layers, hidden 896, intermediate 4864, 14 heads / 2 KV heads, q/k/v bias,
untied lm_head over the 151,936-token vocabulary, bf16 (~1 GB).

    make_bench_model.py OUT_DIR
"""
import sys

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
                  torch_dtype="bfloat16")
torch.manual_seed(0)
with torch.no_grad():
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    for p in model.parameters():
        p.normal_(0, 0.02)
model.save_pretrained(sys.argv[1], safe_serialization=True)
