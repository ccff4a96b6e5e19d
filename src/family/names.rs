//! Checkpoint tensor names, written once per naming scheme. Layer `i`'s module `m` has
//! `{layers}.{i}.{m}.weight` (and `.bias`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightNames {
    pub embed_tokens: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    pub layers: &'static str,
    pub input_norm: &'static str,
    pub q_proj: &'static str,
    pub k_proj: &'static str,
    pub v_proj: &'static str,
    /// q, k and v in one tensor (when the family fuses them).
    pub qkv_proj: &'static str,
    pub o_proj: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub post_attention_norm: &'static str,
    /// Norms on the attention and MLP outputs (glm4).
    pub attn_output_norm: &'static str,
    pub mlp_output_norm: &'static str,
    pub gate_proj: &'static str,
    pub up_proj: &'static str,
    /// gate and up in one tensor (when the family fuses them).
    pub gate_up_proj: &'static str,
    pub down_proj: &'static str,
}

impl WeightNames {
    /// Module `module` of layer `layer`, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module(&self, layer: usize, module: &str) -> String {
        format!("{}.{layer}.{module}", self.layers)
    }

    /// `<module>.weight` of layer `layer`.
    pub fn weight(&self, layer: usize, module: &str) -> String {
        format!("{}.weight", self.module(layer, module))
    }

    /// `<module>.bias` of layer `layer`.
    pub fn bias(&self, layer: usize, module: &str) -> String {
        format!("{}.bias", self.module(layer, module))
    }
}

/// transformers' `LlamaForCausalLM` names, shared by every family that copies its modules
/// (the fused names are phi3's, the branch output norms glm4's).
pub const LLAMA: WeightNames = WeightNames {
    embed_tokens: "model.embed_tokens.weight",
    final_norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layers: "model.layers",
    input_norm: "input_layernorm",
    q_proj: "self_attn.q_proj",
    k_proj: "self_attn.k_proj",
    v_proj: "self_attn.v_proj",
    qkv_proj: "self_attn.qkv_proj",
    o_proj: "self_attn.o_proj",
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    post_attention_norm: "post_attention_layernorm",
    attn_output_norm: "post_self_attn_layernorm",
    mlp_output_norm: "post_mlp_layernorm",
    gate_proj: "mlp.gate_proj",
    up_proj: "mlp.up_proj",
    gate_up_proj: "mlp.gate_up_proj",
    down_proj: "mlp.down_proj",
};

/// InternLM2's remote-code names (`modeling_internlm2.py`): `wqkv` is grouped per kv head
/// (undone on read, see `Stored`), `w1`/`w3`/`w2` are gate/up/down. It has no separate q/k/v,
/// q/k norms, branch norms or fused gate_up (those entries are never read).
pub const INTERNLM2: WeightNames = WeightNames {
    embed_tokens: "model.tok_embeddings.weight",
    final_norm: "model.norm.weight",
    lm_head: "output.weight",
    layers: "model.layers",
    input_norm: "attention_norm",
    qkv_proj: "attention.wqkv",
    o_proj: "attention.wo",
    post_attention_norm: "ffn_norm",
    gate_proj: "feed_forward.w1",
    up_proj: "feed_forward.w3",
    down_proj: "feed_forward.w2",
    ..LLAMA
};

/// Baichuan2's remote-code names (`modeling_baichuan.py`): llama's, with q/k/v packed into
/// `W_pack` (rows q | k | v).
pub const BAICHUAN: WeightNames = WeightNames {
    qkv_proj: "self_attn.W_pack",
    ..LLAMA
};

/// ChatGLM3 / GLM-4 remote-code names (`modeling_chatglm.py`): q/k/v packed in
/// `query_key_value` (rows q | k | v), gate/up fused in `dense_h_to_4h` (gate first).
pub const CHATGLM: WeightNames = WeightNames {
    embed_tokens: "transformer.embedding.word_embeddings.weight",
    final_norm: "transformer.encoder.final_layernorm.weight",
    lm_head: "transformer.output_layer.weight",
    layers: "transformer.encoder.layers",
    input_norm: "input_layernorm",
    qkv_proj: "self_attention.query_key_value",
    o_proj: "self_attention.dense",
    post_attention_norm: "post_attention_layernorm",
    gate_up_proj: "mlp.dense_h_to_4h",
    down_proj: "mlp.dense_4h_to_h",
    ..LLAMA
};
