#!/usr/bin/env python3
"""Tiny random vision-language models made by transformers, with what transformers computes on
them (run with the toolchain venv's python).

    make_vlm_fixtures.py OUT_DIR [NAME...]

For each fixture it writes OUT_DIR/<name>/ with
  config.json + model.safetensors   as save_pretrained writes them (the internvl_chat ones are
                                    rewritten into OpenGVLab's layout, see below)
  photo.png                         the real photo (scikit-image's chelsea) the processor read
  photo2.png                        the two-image prompt's second photo (astronaut; qwen25vl,
                                    internvl)
  expected/inputs.safetensors       pixel_values as the processor made them (f32), image_grid_thw
                                    (Qwen, i64), image_embeds (f32 [tokens, H], what the vision
                                    tower + projector computed), and vision_block_{i} (each vision
                                    block's output, Qwen: in window order, InternVL: with CLS,
                                    batch of tiles); internvl also resized.pixel_values /
                                    resized.image_embeds: one tile larger than the config's
                                    (position embedding interpolated)
  expected.json                     processor      the image processor class and its settings
                                    prompt         prompt ids, image placeholders expanded
                                    image_token_id the placeholder id (and the other special ids)
                                    position_ids   Qwen: the [3, L] M-RoPE position ids of the
                                                   prompt (transformers' get_rope_index)
                                    prefill_logits logits of the last prompt position
                                    tokens         16 greedy tokens (KV-cached decoding)
                                    two_images     (qwen25vl, internvl) prompt, position_ids
                                                   (Qwen), prefill_logits and tokens of a
                                                   prompt with two images (two_images.* tensors
                                                   in inputs.safetensors; internvl also tiles:
                                                   each image's tile count)
                                    tokens_text_only  16 greedy tokens for the same prompt with
                                                   the image placeholders left as plain token
                                                   embeddings (1D positions): shows the image
                                                   changes the answer

Token ids: the real ids (151655 etc.) would need a 152k-row embedding; the tiny models have a
1024-token vocabulary and the configs name small ids instead (image_token_id etc. are config
fields transformers reads, so nothing else changes).

The internvl_chat fixtures are OpenGVLab's remote-code layout, written from the native
InternVLForConditionalGeneration fixture with the same weights: config rewritten (model_type
internvl_chat, llm_config, int sizes, qkv_bias), keys renamed and q/k/v fused into attn.qkv
(the conversion table of transformers' convert_internvl_weights_to_hf.py, reversed). Their
expectations are the native model's: OpenGVLab's InternViT computes the same function.

Float32 weights unless the name ends in _bf16 (those are what TPU-MLIR's own llm_convert.py needs:
it refuses a -q that differs from the stored dtype); expectations are computed in f32 from the
stored weights, eager attention.
"""
import json
import os
import shutil
import sys
import zlib

import torch
from safetensors.torch import load_file, save_file
from transformers import (InternVLConfig, InternVLForConditionalGeneration, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

STEPS = 16
VOCAB = 1024
SKIMAGE_DATA = os.path.join(os.path.dirname(__import__("skimage").__file__), "data")
PHOTO = os.path.join(SKIMAGE_DATA, "chelsea.png")
# The second image of the two-image prompt.
PHOTO2 = os.path.join(SKIMAGE_DATA, "astronaut.png")

# Small special ids inside the tiny vocabulary (see the module docstring).
QWEN_IDS = dict(vision_start_token_id=1000, vision_end_token_id=1001, image_token_id=1002,
                video_token_id=1003)
INTERN_IDS = dict(img_start=1000, img_end=1001, image_token_id=1002)
TEXT_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
BEFORE, AFTER = [3, 17, 256], [42, 7, 511, 128]

# Processor settings: small images, so the tests stay fast. 140x224 for chelsea (300x451):
# a 10x16 patch grid, 5x8 merge units, windows of 4x4 units with partial ones at the edges.
QWEN_PIXELS = dict(min_pixels=56 * 56, max_pixels=140 * 224)
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def text_dims(**kw):
    d = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             rms_norm_eps=1e-6, initializer_range=0.1, tie_word_embeddings=False, **TEXT_IDS)
    d.update(kw)
    return d


def mrope(section, theta=10000.0):
    return {"rope_type": "default", "mrope_section": section, "rope_theta": theta}


def qwen25(vision, text):
    return lambda: Qwen2_5_VLConfig(vision_config=vision, text_config=text, **QWEN_IDS)


def qwen2(vision, text):
    return lambda: Qwen2VLConfig(vision_config=vision, text_config=text, **QWEN_IDS)


def intern(vision, text, **kw):
    return lambda: InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5,
                                  image_token_id=INTERN_IDS["image_token_id"],
                                  image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2 // 4,
                                  **kw)


def qwen25_vision(**kw):
    d = dict(depth=3, hidden_size=64, intermediate_size=96, num_heads=2, out_hidden_size=128,
             fullatt_block_indexes=[1], window_size=112, initializer_range=0.1)
    d.update(kw)
    return d


def intern_vision(**kw):
    d = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
             image_size=112, patch_size=14, attention_bias=True, layer_norm_eps=1e-6,
             initializer_range=0.1)
    d.update(kw)
    return d


# name -> (kind, config builder, stored dtype, source fixture for internvl_chat or None)
FIXTURES = {
    # vision head_dim 32 (not 80), 3 blocks with block 1 full attention, the others windowed.
    "qwen25vl": ("qwen25", qwen25(qwen25_vision(), text_dims(rope_parameters=mrope([4, 6, 6]))),
                 torch.float32, None),
    # vision head_dim 80 (160 / 2 heads, what llm_convert.py's Qwen2_5VLConverter hardcodes),
    # 4 blocks, full attention in 1 and 3; text head_dim 128 with the default mrope [16, 24, 24].
    "qwen25vl_hd80_bf16": ("qwen25", qwen25(
        qwen25_vision(depth=4, hidden_size=160, intermediate_size=256, num_heads=2, out_hidden_size=256,
                      fullatt_block_indexes=[1, 3]),
        text_dims(hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
                  rope_parameters=mrope([16, 24, 24]))), torch.bfloat16, None),
    # LayerNorm blocks, quick_gelu fc MLP, full attention everywhere; vision head_dim 48.
    "qwen2vl": ("qwen2", qwen2(dict(depth=2, embed_dim=96, hidden_size=128, num_heads=2, mlp_ratio=2,
                                    initializer_range=0.1),
                               text_dims(rope_parameters=mrope([4, 6, 6]))), torch.float32, None),
    # transformers' native layout; 112x112 tiles (8x8 patches, 16 tokens a tile), head_dim 32.
    "internvl": ("intern", intern(intern_vision(), text_dims(model_type="qwen2"), tie_word_embeddings=False),
                 torch.float32, None),
    # OpenGVLab's layout of the same model.
    "internvl_chat": ("intern", None, torch.float32, "internvl"),
    # InternViT-6B's options: RMSNorm blocks and q/k RMSNorm over all heads, no q/k/v bias.
    "internvl_qknorm": ("intern", intern(intern_vision(use_qk_norm=True, norm_type="rms_norm",
                                                       attention_bias=False),
                                         text_dims(model_type="qwen2"), tie_word_embeddings=False),
                        torch.float32, None),
    # InternViT-300M's geometry (what TPU-MLIR's InternVL3Converter hardcodes) at depth 2, one
    # 448x448 tile: the internvl_chat layout for llm_convert.py; its native source (a name
    # starting with "_") is only a step and is removed. Tied lm_head by InternVLConfig's
    # default top-level tie_word_embeddings (true), which transformers obeys over the text
    # config's false (and drops lm_head from the file); llm_config says true.
    "_internvl_300m_bf16": ("intern", intern(
        intern_vision(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
                      intermediate_size=4096, image_size=448, initializer_range=0.02),
        text_dims(model_type="qwen2")), torch.bfloat16, None),
    "internvl_chat_300m_bf16": ("intern", None, torch.bfloat16, "_internvl_300m_bf16"),
    # For TPU-MLIR's own Qwen2VLConverter: vision head_dim 80 (160 / 2 heads; its rotary is
    # hardcoded for 80), bf16, plus vision_config.in_chans and the top-level rope_scaling it
    # reads (add_in_chans).
    "qwen2vl_hd80_bf16": ("qwen2", qwen2(dict(depth=2, embed_dim=160, hidden_size=128, num_heads=2,
                                              mlp_ratio=2, initializer_range=0.1),
                                         text_dims(rope_parameters=mrope([4, 6, 6]))),
                          torch.bfloat16, None),
}

# InternVL tiles per image (the processor's max_patches), 4 unless named here.
INTERN_MAX_TILES = {"_internvl_300m_bf16": 1}


def seed(name):
    torch.manual_seed(zlib.crc32(name.encode()))


def randomise(model):
    """Non-trivial norms, biases, layer scales, class token and position embedding (their
    initial values are ones, zeros or constants), so every weight path is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "lambda_" in name:
                p.copy_(0.5 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias") or "cls_token" in name or "position_embeddings" in name:
                p.copy_(0.1 * torch.randn_like(p))


def photo(path=PHOTO):
    from PIL import Image
    return Image.open(path).convert("RGB")


def qwen_inputs(cfg, _name, photos=(PHOTO,)):
    """The processor's rows for `photos`, and a prompt with each image between
    <|vision_start|> and <|vision_end|> (a text token between two images)."""
    proc = Qwen2VLImageProcessorPil(**QWEN_PIXELS, patch_size=cfg.vision_config.patch_size,
                                    merge_size=cfg.vision_config.spatial_merge_size,
                                    temporal_patch_size=cfg.vision_config.temporal_patch_size)
    out = proc(images=[photo(p) for p in photos], return_tensors="pt")
    pixel_values, grid = out["pixel_values"], out["image_grid_thw"]
    prompt = list(BEFORE)
    for i, g in enumerate(grid):
        n_tokens = int(g.prod()) // cfg.vision_config.spatial_merge_size ** 2
        prompt += ([5] if i else []) + [QWEN_IDS["vision_start_token_id"]]
        prompt += [QWEN_IDS["image_token_id"]] * n_tokens + [QWEN_IDS["vision_end_token_id"]]
    prompt += AFTER
    info = {"class": type(proc).__name__, **QWEN_PIXELS}
    return pixel_values, grid, prompt, info


@torch.no_grad()
def qwen_two_images(model, cfg, name):
    """A prompt with two images (photo, then PHOTO2): embeddings, positions, tokens."""
    pixel_values, grid, prompt, _ = qwen_inputs(cfg, name, (PHOTO, PHOTO2))
    ids = torch.tensor([prompt])
    embeds = model.model.visual(pixel_values, grid_thw=grid, return_dict=True).pooler_output
    mm = (ids == cfg.image_token_id).int()
    positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
    model.model.rope_deltas = None
    logits, tokens = greedy(model, dict(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid,
                                        mm_token_type_ids=mm))
    model.model.rope_deltas = None
    tensors = {"two_images.pixel_values": pixel_values.float().contiguous(),
               "two_images.image_grid_thw": grid.contiguous(),
               "two_images.image_embeds": embeds.contiguous()}
    return tensors, {"prompt": prompt, "position_ids": positions[:, 0].tolist(),
                     "prefill_logits": logits, "tokens": tokens}


@torch.no_grad()
def intern_resized_tile(model, cfg):
    """One tile 1.25x the config's size (10x10 patches for 112/14): transformers interpolates
    the position embedding (bicubic)."""
    size = cfg.vision_config.image_size[0] * 5 // 4
    proc = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=False, **IMAGENET)
    pixel_values = proc(images=[photo()], return_tensors="pt")["pixel_values"]
    embeds = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                            vision_feature_select_strategy="default",
                                            return_dict=True).pooler_output
    return {"resized.pixel_values": pixel_values.float().contiguous(),
            "resized.image_embeds": embeds.reshape(-1, cfg.text_config.hidden_size).contiguous()}


def intern_inputs(cfg, name, photos=(PHOTO,)):
    """Each photo's tiles (in order, concatenated) and a prompt with each image between <img>
    and </img> (a text token between two images)."""
    size = cfg.vision_config.image_size[0]
    settings = dict(crop_to_patches=True, min_patches=1, max_patches=INTERN_MAX_TILES.get(name, 4),
                    **IMAGENET)
    proc = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, **settings)
    tiles, prompt = [], list(BEFORE)
    for i, p in enumerate(photos):
        pv = proc(images=[photo(p)], return_tensors="pt")["pixel_values"]
        tiles.append(pv)
        prompt += ([5] if i else []) + [INTERN_IDS["img_start"]]
        prompt += [INTERN_IDS["image_token_id"]] * (pv.shape[0] * cfg.image_seq_length)
        prompt += [INTERN_IDS["img_end"]]
    prompt += AFTER
    info = {"class": type(proc).__name__, "size": size, **settings,
            "tiles": [int(t.shape[0]) for t in tiles]}
    return torch.cat(tiles, 0), None, prompt, info


@torch.no_grad()
def intern_two_images(model, cfg, name):
    """A prompt with two images (photo, then PHOTO2): embeddings (every tile in order), tokens."""
    pixel_values, _, prompt, info = intern_inputs(cfg, name, (PHOTO, PHOTO2))
    assert info["tiles"][0] != info["tiles"][1], info
    embeds = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                            vision_feature_select_strategy="default",
                                            return_dict=True).pooler_output
    logits, tokens = greedy(model, dict(input_ids=torch.tensor([prompt]), pixel_values=pixel_values))
    tensors = {"two_images.pixel_values": pixel_values.float().contiguous(),
               "two_images.image_embeds": embeds.reshape(-1, cfg.text_config.hidden_size).contiguous()}
    return tensors, {"prompt": prompt, "tiles": info["tiles"], "prefill_logits": logits,
                     "tokens": tokens}


@torch.no_grad()
def greedy(model, prefill_kwargs):
    out = model(**prefill_kwargs, use_cache=True)
    logits, past = out.logits[0, -1], out.past_key_values
    first_logits, tokens = logits.tolist(), []
    for _ in range(STEPS):
        tok = int(torch.argmax(logits))
        tokens.append(tok)
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
        logits, past = out.logits[0, -1], out.past_key_values
    return first_logits, tokens


@torch.no_grad()
def expected(name, kind, model, cfg):
    pixel_values, grid, prompt, info = (qwen_inputs if kind != "intern" else intern_inputs)(cfg, name)
    ids = torch.tensor([prompt])
    tensors = {"pixel_values": pixel_values.float().contiguous()}
    if kind == "intern":
        feats = model.model.get_image_features(pixel_values=pixel_values, vision_feature_layer=-1,
                                               vision_feature_select_strategy="default",
                                               output_hidden_states=True, return_dict=True)
        embeds = feats.pooler_output.reshape(-1, cfg.text_config.hidden_size)
        blocks = feats.hidden_states[1:]
        prefill = dict(input_ids=ids, pixel_values=pixel_values)
        positions = None
    else:
        tensors["image_grid_thw"] = grid.contiguous()
        feats = model.model.visual(pixel_values, grid_thw=grid, output_hidden_states=True, return_dict=True)
        embeds, blocks = feats.pooler_output, feats.hidden_states[1:]
        mm = (ids == cfg.image_token_id).int()
        positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)
        positions = positions[:, 0].tolist()
        model.model.rope_deltas = None
        prefill = dict(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid, mm_token_type_ids=mm)
    tensors["image_embeds"] = embeds.contiguous()
    for i, h in enumerate(blocks):
        tensors[f"vision_block_{i}"] = h.contiguous()
    prefill_logits, tokens = greedy(model, prefill)
    if kind != "intern":
        model.model.rope_deltas = None
    _, text_only = greedy(model, dict(input_ids=ids))
    assert text_only != tokens, "the image does not change the greedy tokens"
    result = {"processor": info, "prompt": prompt, "position_ids": positions,
              "prefill_logits": prefill_logits, "tokens": tokens, "tokens_text_only": text_only,
              "image_tokens": int(embeds.shape[0])}
    if kind == "intern":
        result.update(INTERN_IDS, tiles=int(pixel_values.shape[0]))
    else:
        result.update(QWEN_IDS, image_grid_thw=grid[0].tolist())
    if name == "qwen25vl":
        more, result["two_images"] = qwen_two_images(model, cfg, name)
        tensors.update(more)
    if name == "internvl":
        tensors.update(intern_resized_tile(model, cfg))
        more, result["two_images"] = intern_two_images(model, cfg, name)
        tensors.update(more)
    return tensors, result


MODEL_CLASSES = {"qwen25": Qwen2_5_VLForConditionalGeneration, "qwen2": Qwen2VLForConditionalGeneration,
                 "intern": InternVLForConditionalGeneration}


def make(out_dir, name, kind, build, dtype):
    d = os.path.join(out_dir, name)
    seed(name)
    cfg = build()
    cls = MODEL_CLASSES[kind]
    model = cls._from_config(cfg, attn_implementation="eager").float().eval()
    randomise(model)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    if kind in ("qwen25", "qwen2") and dtype == torch.bfloat16:
        add_in_chans(d)
    reloaded = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    tensors, result = expected(name, kind, reloaded, reloaded.config)
    shutil.copyfile(PHOTO, os.path.join(d, "photo.png"))
    if "two_images" in result:
        shutil.copyfile(PHOTO2, os.path.join(d, "photo2.png"))
    os.makedirs(os.path.join(d, "expected"))
    # In a sub-folder: the model folder's *.safetensors are the checkpoint.
    save_file(tensors, os.path.join(d, "expected", "inputs.safetensors"))
    json.dump(result, open(os.path.join(d, "expected.json"), "w"))


def add_in_chans(d):
    """TPU-MLIR's Qwen2_5VLConverter reads vision_config.in_chans, which transformers 5.6.2 no
    longer writes (it writes in_channels); the llm_convert.py fixtures get both."""
    path = os.path.join(d, "config.json")
    c = json.load(open(path))
    c["vision_config"]["in_chans"] = c["vision_config"]["in_channels"]
    if c["model_type"] == "qwen2_vl":
        # Qwen2VLConverter reads mrope_section from the top-level rope_scaling only.
        section = c["text_config"]["rope_parameters"]["mrope_section"]
        c["rope_scaling"] = {"type": "mrope", "mrope_section": section}
    json.dump(c, open(path, "w"), indent=2)


# native InternVL key (after the `model.` prefix transformers would add in memory, as on disk)
# -> OpenGVLab key; q/k/v are fused separately.
INTERN_CHAT_RENAMES = [
    ("vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding"),
    ("vision_tower.embeddings.patch_embeddings.projection.", "vision_model.embeddings.patch_embedding."),
    ("vision_tower.embeddings.position_embeddings", "vision_model.embeddings.position_embedding"),
    ("vision_tower.encoder.layer.", "vision_model.encoder.layers."),
    (".attention.projection_layer.", ".attn.proj."),
    (".layernorm_before.", ".norm1."),
    (".layernorm_after.", ".norm2."),
    (".lambda_1", ".ls1"),
    (".lambda_2", ".ls2"),
    ("multi_modal_projector.layer_norm.", "mlp1.0."),
    ("multi_modal_projector.linear_1.", "mlp1.1."),
    ("multi_modal_projector.linear_2.", "mlp1.3."),
]


def chat_key(key):
    for old, new in INTERN_CHAT_RENAMES:
        key = key.replace(old, new)
    return key


def make_internvl_chat(out_dir, name, source):
    """OpenGVLab's internvl_chat layout of the native fixture `source` (same weights)."""
    src, d = os.path.join(out_dir, source), os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    weights = load_file(os.path.join(src, "model.safetensors"))
    out = {}
    for key, t in weights.items():
        if ".attention.q_proj." in key:
            parts = [weights[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[chat_key(key.replace(".attention.q_proj.", ".attn.qkv."))] = torch.cat(parts, 0)
        elif ".attention.k_proj." in key or ".attention.v_proj." in key:
            continue
        else:
            out[chat_key(key)] = t
    assert not any(k.startswith(("vision_tower.", "multi_modal_projector.", "model.")) for k in out), sorted(out)
    save_file(out, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    native = json.load(open(os.path.join(src, "config.json")))
    v, t = native["vision_config"], native["text_config"]
    vision = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": v["hidden_size"], "num_hidden_layers": v["num_hidden_layers"],
        "num_attention_heads": v["num_attention_heads"], "intermediate_size": v["intermediate_size"],
        "hidden_act": v["hidden_act"], "layer_norm_eps": v["layer_norm_eps"],
        "image_size": v["image_size"][0], "patch_size": v["patch_size"][0], "num_channels": 3,
        "qkv_bias": True, "qk_normalization": v["use_qk_norm"], "norm_type": v["norm_type"],
        "initializer_factor": 1.0, "drop_path_rate": 0.0, "dropout": 0.0, "attention_dropout": 0.0,
        "use_flash_attn": False, "torch_dtype": native.get("dtype", "float32"),
    }
    # OpenGVLab's Qwen2ForCausalLM ties by its own config.
    llm = dict(t, architectures=["Qwen2ForCausalLM"], tie_word_embeddings=native["tie_word_embeddings"])
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": native["downsample_ratio"], "dynamic_image_size": True,
        "force_image_size": v["image_size"][0], "max_dynamic_patch": 4, "min_dynamic_patch": 1,
        "ps_version": "v2", "select_layer": -1, "template": "internvl2_5", "use_thumbnail": True,
        "use_backbone_lora": 0, "use_llm_lora": 0, "torch_dtype": native.get("dtype", "float32"),
        "llm_config": llm, "vision_config": vision,
        # Not an OpenGVLab field (the real model's <IMG_CONTEXT> id comes from its tokenizer;
        # these tiny models have none): the id, under the native layout's key.
        "image_token_id": native["image_token_id"],
    }
    assert not native.get("vision_feature_layer", -1) != -1
    json.dump(config, open(os.path.join(d, "config.json"), "w"), indent=2)
    for f in ("expected.json", "photo.png"):
        shutil.copyfile(os.path.join(src, f), os.path.join(d, f))
    shutil.copytree(os.path.join(src, "expected"), os.path.join(d, "expected"))


def main():
    out_dir = sys.argv[1]
    names = sys.argv[2:] or list(FIXTURES)
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        kind, build, dtype, source = FIXTURES[name]
        if source:
            make_internvl_chat(out_dir, name, source)
        else:
            make(out_dir, name, kind, build, dtype)
        print("fixture", name, flush=True)
    for name in names:
        if name.startswith("_"):
            shutil.rmtree(os.path.join(out_dir, name))


if __name__ == "__main__":
    main()
