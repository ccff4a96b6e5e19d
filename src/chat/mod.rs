//! `chat` and `generate`: a bmodel plus its config folder (tokenizer, chat template,
//! generation_config.json) as a text generator, on the simulator or a device.

pub mod chat_image;
pub mod command;
pub mod config;
pub mod conversation;
pub mod detok;
pub mod generate;
pub mod options;
pub mod repl;
pub mod template;

pub use command::{GenerateArgs, TextGen, TextGenArgs};
pub use config::{ChatConfig, GenerationDefaults};
pub use conversation::Conversation;
pub use detok::IncrementalDecoder;
pub use generate::{generate, Generation, StopReason};
pub use options::{resolve as resolve_sampling, SamplingFlags};
pub use repl::ChatArgs;
pub use template::{ChatTemplate, Message};

#[cfg(test)]
pub(crate) mod test_util {
    use tokenizers::Tokenizer;

    /// A byte-level BPE tokenizer: ids 0..256 are the 256 bytes, no merges.
    pub(crate) fn byte_tokenizer() -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8)
            .map(|b| (byte_char(b).to_string(), serde_json::json!(b)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": []},
        });
        Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap()
    }

    /// GPT-2's bytes_to_unicode.
    fn byte_char(b: u8) -> char {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        if printable(b) {
            return char::from(b);
        }
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }
}
