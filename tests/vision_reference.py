"""Reference outputs of transformers 5.6.2 (and LLM-TPU's / OpenGVLab's preprocessing code)
for tests/vision_preprocess.rs.

Usage: python vision_reference.py OUT_DIR IMAGE...

Writes OUT_DIR/summary.json plus raw little-endian arrays (`*.f32`, `*.i64`, `*.u8`) named in
it. Everything here is what the Rust port must reproduce: pixel values (within measured
bounds), and grids, window/reverse indices, masks and M-RoPE ids exactly.
"""

import itertools
import json
import math
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import torchvision.transforms as T
from torchvision.transforms.functional import InterpolationMode
from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as got_pil
from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLModel,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
    smart_resize,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

OUT = sys.argv[1]
IMAGES = sys.argv[2:]
os.makedirs(OUT, exist_ok=True)
summary = {"qwen": [], "internvl": [], "decode": [], "resize": [], "vit": [], "mrope": []}


def save(name, array, dtype):
    np.ascontiguousarray(np.asarray(array).astype(dtype)).tofile(os.path.join(OUT, name))
    return name


# --- decode and resize: PIL's own RGB and BICUBIC, to check the Rust port bit for bit ---------
for path in IMAGES:
    stem = os.path.basename(path)
    rgb = Image.open(path).convert("RGB")
    summary["decode"].append(
        {"image": path, "width": rgb.width, "height": rgb.height,
         "rgb": save(f"{stem}.rgb.u8", np.array(rgb), np.uint8)}
    )
    for w, h in [(97, 61), (rgb.width * 2 + 3, rgb.height + 1), (448, 448), (28, 700)]:
        out = rgb.resize((w, h), Image.BICUBIC)
        summary["resize"].append(
            {"image": path, "width": w, "height": h,
             "rgb": save(f"{stem}.resize{w}x{h}.u8", np.array(out), np.uint8)}
        )

# --- Qwen2-VL image processor: PIL and torchvision paths ------------------------------------
QWEN_BOUNDS = [(56 * 56, 28 * 28 * 1280), (64 * 28 * 28, 160 * 28 * 28), (4 * 28 * 28, 24 * 28 * 28)]
for path in IMAGES:
    stem = os.path.basename(path)
    image = Image.open(path).convert("RGB")
    for k, (lo, hi) in enumerate(QWEN_BOUNDS):
        entry = {"image": path, "min_pixels": lo, "max_pixels": hi}
        for name, cls in [("pil", Qwen2VLImageProcessorPil), ("fast", Qwen2VLImageProcessor)]:
            proc = cls(min_pixels=lo, max_pixels=hi)
            out = proc(images=[image], return_tensors="np")
            entry[f"{name}_grid"] = [int(v) for v in out["image_grid_thw"][0]]
            entry[name] = save(f"{stem}.qwen{k}.{name}.f32", out["pixel_values"], np.float32)
        summary["qwen"].append(entry)

# LLM-TPU's path: qwen_vl_utils' fetch_image resize (its smart_resize variant, bounds 4 and
# 16384 merged tokens; Image.resize's default filter), then the processor with LLM-TPU's
# min 64*28*28 and a vit capacity as max.
def qwen_vl_utils_smart_resize(height, width, factor, min_pixels, max_pixels):
    # qwen_vl_utils 0.0.14: sides rounded to >= factor; scaled-down sides not clamped.
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


summary["llm_tpu"] = []
for path in IMAGES:
    stem = os.path.basename(path)
    image = Image.open(path).convert("RGB")
    for k, capacity in enumerate([3072, 64]):
        h, w = qwen_vl_utils_smart_resize(image.height, image.width, 28, 4 * 28 * 28, 16384 * 28 * 28)
        first = image.resize((w, h))
        proc = Qwen2VLImageProcessorPil(min_pixels=64 * 28 * 28, max_pixels=capacity * 14 * 14)
        out = proc(images=[first], return_tensors="np")
        summary["llm_tpu"].append({
            "image": path, "capacity": capacity, "first": [h, w],
            "grid": [int(v) for v in out["image_grid_thw"][0]],
            "pixels": save(f"{stem}.llmtpu{k}.f32", out["pixel_values"], np.float32)})

# smart_resize on many sizes (the grid must be exactly equal).
sizes = [(h, w) for h in [1, 13, 27, 28, 41, 42, 43, 70, 99, 351, 500, 1023, 4000]
         for w in [1, 14, 42, 56, 70, 300, 641, 1999, 3000]]
summary["smart_resize"] = []
for h, w in sizes:
    for lo, hi in QWEN_BOUNDS:
        try:
            r = list(smart_resize(h, w, 28, lo, hi))
        except ValueError:
            r = None
        summary["smart_resize"].append({"h": h, "w": w, "min": lo, "max": hi, "out": r,
                                        "qwen_vl_utils": list(qwen_vl_utils_smart_resize(h, w, 28, lo, hi))
                                        if r is not None else None})

# --- vit host inputs: transformers' get_window_index / rot_pos_emb + LLM-TPU's masks ---------
def vision_self(window_size, merge=2, patch=14):
    ns = types.SimpleNamespace(window_size=window_size, spatial_merge_size=merge, patch_size=patch,
                               spatial_merge_unit=merge * merge)
    # rot_pos_emb gathers a [n, d] table by the ids: an arange table returns the ids themselves.
    ns.rotary_pos_emb = lambda n: torch.arange(int(n)).unsqueeze(1)
    return ns


def attn_mask(seq_length, cu_seqlens):  # LLM-TPU pipeline.py get_attn_mask
    mask = torch.full([1, seq_length, seq_length], -10000.0, dtype=torch.float32)
    for i in range(1, len(cu_seqlens)):
        mask[..., cu_seqlens[i - 1]:cu_seqlens[i], cu_seqlens[i - 1]:cu_seqlens[i]] = 0
    return mask


for t, gh, gw, window, merge, patch in [(1, 12, 20, 112, 2, 14), (1, 16, 8, 112, 2, 14),
                                        (1, 2, 2, 112, 2, 14), (1, 26, 34, 112, 2, 14),
                                        (1, 24, 18, 128, 2, 16), (1, 18, 12, 84, 3, 14)]:
    grid = torch.tensor([[t, gh, gw]])
    ns = vision_self(window, merge, patch)
    window_index, cu_window = Qwen2_5_VisionTransformerPretrainedModel.get_window_index(ns, grid)
    cu_window = torch.unique_consecutive(torch.tensor(cu_window, dtype=torch.int32))
    pos = Qwen2_5_VisionTransformerPretrainedModel.rot_pos_emb(ns, grid)
    n = t * gh * gw
    unit = merge * merge
    pos_w = pos.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
    cu = F.pad(torch.repeat_interleave(grid[:, 1] * grid[:, 2], grid[:, 0]).cumsum(0), (1, 0))
    key = f"vit{t}x{gh}x{gw}w{window}m{merge}p{patch}"
    summary["vit"].append({
        "grid": [t, gh, gw], "window_size": window, "merge": merge, "patch": patch,
        "window_index": window_index.tolist(), "cu_window_seqlens": cu_window.tolist(),
        "reverse_index": torch.argsort(window_index).tolist(),
        "rot_pos": pos.reshape(-1).tolist(), "rot_pos_windowed": pos_w.reshape(-1).tolist(),
        "full_mask": save(f"{key}.full.f32", attn_mask(n, cu), np.float32),
        "window_mask": save(f"{key}.window.f32", attn_mask(n, cu_window), np.float32),
    })

# --- M-RoPE position ids: get_rope_index of both models -------------------------------------
PAD, TEXT = 151655, 7
for name, model in [("qwen2_5_vl", Qwen2_5_VLModel), ("qwen2_vl", Qwen2VLModel)]:
    for grids, texts in [([(1, 4, 6)], [3, 5]), ([(1, 12, 20), (1, 8, 4)], [14, 2, 9]),
                         ([(1, 2, 2)], [0, 1]), ([(1, 6, 2), (1, 2, 10), (1, 4, 4)], [1, 3, 3, 0])]:
        ids, types_ = [], []
        for i, n_text in enumerate(texts):
            ids += [TEXT + i] * n_text
            types_ += [0] * n_text
            if i < len(grids):
                t, h, w = grids[i]
                ids += [PAD] * (t * h * w // 4)
                types_ += [1] * (t * h * w // 4)
        ns = types.SimpleNamespace(config=types.SimpleNamespace(
            vision_config=types.SimpleNamespace(spatial_merge_size=2, tokens_per_second=2)))
        ns.get_vision_position_ids = lambda *a, **k: model.get_vision_position_ids(ns, *a, **k)
        pos, delta = model.get_rope_index(
            ns, torch.tensor([ids]), mm_token_type_ids=torch.tensor([types_]),
            image_grid_thw=torch.tensor(grids))
        summary["mrope"].append({"model": name, "ids": ids, "grids": grids,
                                 "position_ids": pos[:, 0].reshape(-1).tolist(),
                                 "delta": int(delta[0, 0])})

# --- InternVL: OpenGVLab dynamic_preprocess + torchvision, and transformers' GotOcr2 ----------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(input_size):  # LLM-TPU models/InternVL3/python_demo/pipeline.py
    return T.Compose([
        T.Lambda(lambda img: img.convert('RGB') if img.mode != 'RGB' else img),
        T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    ])


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float('inf')
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def opengvlab_grid(width, height, min_num, max_num, image_size):
    target_ratios = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                        for j in range(1, n + 1) if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    return find_closest_aspect_ratio(width / height, target_ratios, width, height, image_size)


def dynamic_preprocess(image, min_num=1, max_num=4, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    ratio = opengvlab_grid(orig_width, orig_height, min_num, max_num, image_size)
    target_width, target_height = image_size * ratio[0], image_size * ratio[1]
    blocks = ratio[0] * ratio[1]
    resized_img = image.resize((target_width, target_height))
    processed = []
    for i in range(blocks):
        box = ((i % (target_width // image_size)) * image_size,
               (i // (target_width // image_size)) * image_size,
               ((i % (target_width // image_size)) + 1) * image_size,
               ((i // (target_width // image_size)) + 1) * image_size)
        processed.append(resized_img.crop(box))
    if use_thumbnail and len(processed) != 1:
        processed.append(image.resize((image_size, image_size)))
    return processed, ratio


for path in IMAGES:
    stem = os.path.basename(path)
    image = Image.open(path).convert("RGB")
    for size, max_num in [(448, 4), (224, 6)]:
        tiles, ratio = dynamic_preprocess(image, max_num=max_num, image_size=size, use_thumbnail=True)
        tf = build_transform(size)
        ogv = torch.stack([tf(t) for t in tiles]).numpy()
        entry = {"image": path, "image_size": size, "max_tiles": max_num, "grid": list(ratio),
                 "tiles": len(tiles),
                 "opengvlab": save(f"{stem}.ivl{size}_{max_num}.ogv.f32", ogv, np.float32)}
        for name, cls in [("hf_pil", got_pil.GotOcr2ImageProcessorPil), ("hf_fast", GotOcr2ImageProcessor)]:
            proc = cls(crop_to_patches=True, min_patches=1, max_patches=max_num,
                       size={"height": size, "width": size},
                       image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
            out = proc(images=[image])
            pv = np.stack([np.asarray(t, dtype=np.float32) for t in out["pixel_values"]])
            entry[f"{name}_tiles"] = int(out["num_patches"][0])
            entry[name] = save(f"{stem}.ivl{size}_{max_num}.{name}.f32", pv, np.float32)
        summary["internvl"].append(entry)

# The tile grid over many sizes, for both candidate orders (exactly equal).
summary["tile_grid"] = []
for w, h in itertools.product([1, 100, 300, 447, 448, 449, 600, 896, 1000, 1344, 2000, 4000],
                              [1, 100, 224, 300, 448, 500, 672, 896, 1000, 3000]):
    for max_num in [1, 4, 6, 12]:
        hf = got_pil.get_optimal_tiled_canvas((h, w), (448, 448), 1, max_num)
        summary["tile_grid"].append({"w": w, "h": h, "max": max_num,
                                     "opengvlab": list(opengvlab_grid(w, h, 1, max_num, 448)),
                                     "hf": list(hf)})

with open(os.path.join(OUT, "summary.json"), "w") as f:
    json.dump(summary, f)
