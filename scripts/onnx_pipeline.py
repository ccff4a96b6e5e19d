#!/usr/bin/env python3
"""Chains exported ONNX pieces the way the LLM-TPU runtime chains bmodel nets (run with the
toolchain venv's python: onnx 1.14.1 + onnxruntime 1.16.3, the versions TPU-MLIR pins).

    onnx_pipeline.py ONNX_DIR PROMPT_IDS STEPS OUT.json

First every piece must pass onnx.checker.check_model(full_check=True). Then prefill:
embedding -> block_0..L-1 (static: mask input, positions 0..T-1, padded to MAX_INPUT_LENGTH;
dynamic: exactly T rows, no mask input; with block_kv_i (history KV): the prompt in
MAX_INPUT_LENGTH chunks, the first through block_i, later ones through block_kv_i over the
history so far) -> lm_head on row T-1; decode: embedding_cache -> block_cache_i (or the smallest
decode stage block_cache_i_k whose history holds history_length) with the KV cache written at
history_length-1 (a block_cache returning the whole [1,S,KVH,D] cache shifted by one: the cache
right-aligned, replaced by that output each step) -> lm_head (--do_sample: lm_head -> greedy_head, and sample_head checked
against a numpy re-implementation). Writes the greedy tokens, each prefill block's output rows and each decode block's output.
"""
import glob
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

MASK = -10000.0  # the runtime's f16 mask value (bf16 uses -9984)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def sample_head_numpy(logits, ids, penalty, temperature, top_k, top_p):
    """TPU-MLIR LlmConverter's sample_head, re-implemented: repetition penalty, top-50,
    temperature, top-p over the cumulative softmax (first 5 always kept), top-k. Returns the
    scaled top-50 logits, their ids, the kept set and the cumulative softmax it was cut on."""
    l = logits[0].copy()
    seen = l[ids]
    l[ids] = np.where(seen < 0, seen * penalty, seen / penalty)
    idx = np.argsort(-l, kind="stable")[:50]
    scaled = l[idx] / temperature
    rank = np.arange(50)
    cumulative = np.cumsum(softmax(scaled))
    keep = ((cumulative < top_p) | (rank < 5)) & (rank < top_k)
    return scaled, idx, keep, cumulative


# How far a cumulative probability may lie from top_p and still round to either side of the
# cut: float32 sums of 50 terms, in whatever order a CPU's kernels add them.
TOP_P_BOUNDARY = 1e-5


def check_sample_head(net, logits, history):
    """sample_head on real logits against the numpy version, for a few parameter sets. What
    the contract promises is checked, not one CPU's rounding: the same 50 candidates in order,
    the kept set equal except where the cumulative probability sits on top_p (top_p 1.0 cuts
    the tail on a rounding boundary), and the probabilities a softmax over the kept set."""
    worst = 0.0
    for penalty, temperature, top_k, top_p in [(1.0, 1.0, 50, 1.0), (1.2, 0.7, 40, 0.8), (1.5, 2.0, 3, 0.5)]:
        ids = np.array([history], np.int32)
        probs, tokens = net["sample_head"].run(None, {
            "m_logits": logits, "input_ids": ids, "penalty": np.array([penalty], np.float32),
            "temperature": np.array([temperature], np.float32), "top_k": np.array([top_k], np.int32),
            "top_p": np.array([top_p], np.float32)})
        scaled, want_t, want_keep, cumulative = sample_head_numpy(logits, ids[0], penalty, temperature, top_k, top_p)
        assert (tokens[0] == want_t).all(), f"sample_head tokens differ: {tokens[0][:8]} vs {want_t[:8]}"
        kept = probs[0] > 0
        differ = np.nonzero(kept != want_keep)[0]
        on_boundary = np.abs(cumulative[differ] - top_p) < TOP_P_BOUNDARY
        assert on_boundary.all(), (
            f"sample_head keeps ranks {differ[~on_boundary].tolist()} differently, away from top_p {top_p} "
            f"(cumulative {cumulative[differ[~on_boundary]].tolist()})")
        assert kept.sum() >= min(5, top_k), f"sample_head kept {kept.sum()} candidates, fewer than 5"
        want_p = softmax(np.where(kept, scaled, -1000.0))
        worst = max(worst, float(np.abs(probs[0] - want_p).max()))
    return worst


def main():
    d, prompt, steps, out_path = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], int(sys.argv[3]), sys.argv[4]
    paths = sorted(glob.glob(os.path.join(d, "*.onnx")))
    for p in paths:
        onnx.checker.check_model(p, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    net = {os.path.basename(p)[:-5]: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in paths}
    layers = sum(1 for n in net if n.startswith("block_") and n[6:].isdigit())
    mil = net["embedding"].get_inputs()[0].shape[1]
    _, seq, kvh, dim = net["block_cache_0"].get_inputs()[3].shape
    history_kv = "block_kv_0" in net
    shifted = net["block_cache_0"].get_outputs()[1].shape[1] == seq
    t = len(prompt)
    assert t <= mil or history_kv, f"prompt of {t} tokens > MAX_INPUT_LENGTH {mil}"
    # --dynamic prefill blocks have no mask input and take exactly the prompt's rows.
    dynamic = len(net["block_0"].get_inputs()) == 2
    kc = [np.zeros((1, seq, kvh, dim), np.float32) for _ in range(layers)]
    vc = [np.zeros((1, seq, kvh, dim), np.float32) for _ in range(layers)]
    hidden = [[] for _ in range(layers)]
    for old in range(0, t, mil):
        chunk = prompt[old : old + mil]
        n = len(chunk)
        ids = np.zeros((1, mil), np.int32)
        ids[0, :n] = chunk
        x = net["embedding"].run(None, {"input_ids": ids})[0]
        pos = np.zeros((1, mil), np.int32)
        pos[0, :n] = np.arange(old, old + n)
        mask = np.full((1, 1, mil, mil), MASK, np.float32)
        for i in range(n):
            mask[0, 0, i, : i + 1] = 0
        if dynamic:
            x, pos = x[:, :n], pos[:, :n]
        for i in range(layers):
            feed = {"input_states": x, "position_ids": pos}
            if old > 0:
                feed["history_k"], feed["history_v"] = kc[i][:, :old], vc[i][:, :old]
                x, k, v = net[f"block_kv_{i}"].run(None, feed)
            else:
                if not dynamic:
                    feed["attention_mask"] = mask
                x, k, v = net[f"block_{i}"].run(None, feed)
            at = seq - n if shifted else old
            kc[i][:, at : at + n] = k[:, :n]
            vc[i][:, at : at + n] = v[:, :n]
            hidden[i].extend(x[0, :n].tolist())
    # Decode stages: (history slots, net name suffix), smallest first.
    stages = sorted((net[f"block_cache_0{sfx}"].get_inputs()[3].shape[1], sfx)
                    for sfx in [""] + [n[len("block_cache_0"):] for n in net if n.startswith("block_cache_0_")])
    # --do_sample: lm_head returns logits and greedy_head picks the token.
    sampling = "greedy_head" in net

    def next_token(row):
        out = net["lm_head"].run(None, {"hidden_states": row})[0]
        if not sampling:
            return int(out[0, 0]), None
        return int(net["greedy_head"].run(None, {"m_logits": out})[0][0, 0]), out

    tok, logits = next_token(x[:, n - 1])
    sample_err = check_sample_head(net, logits, prompt) if sampling else None
    tokens = [tok]
    history = t + 1
    used = []
    decode_hidden = []
    for _ in range(steps - 1):
        x = net["embedding_cache"].run(None, {"input_ids": np.array([[tok]], np.int32)})[0]
        pos1 = np.array([[history - 1]], np.int32)
        slots, sfx = next(s for s in stages if s[0] >= history)
        used.append(slots)
        step_hidden = []
        m1 = np.zeros((1, 1, 1, slots + 1), np.float32)
        if shifted:
            m1[..., : slots - history + 1] = MASK
        else:
            m1[..., history - 1 : slots] = MASK
        for i in range(layers):
            x, k, v = net[f"block_cache_{i}{sfx}"].run(None, {
                "input_states": x, "position_ids": pos1, "attention_mask": m1,
                "history_k": kc[i][:, :slots], "history_v": vc[i][:, :slots]})
            if shifted:
                kc[i][:], vc[i][:] = k, v
            else:
                kc[i][:, history - 1] = k[:, 0]
                vc[i][:, history - 1] = v[:, 0]
            step_hidden.append(x[0, 0].tolist())
        decode_hidden.append(step_hidden)
        tok, _ = next_token(x[:, 0])
        tokens.append(tok)
        history += 1
    json.dump({"tokens": tokens, "hidden": hidden, "checked": len(paths), "sample_head_max_diff": sample_err,
               "stages_used": sorted(set(used)), "decode_hidden": decode_hidden},
              open(out_path, "w"))


if __name__ == "__main__":
    main()
