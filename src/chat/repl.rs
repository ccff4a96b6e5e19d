//! The `chat` command: a line of stdin per turn, `/clear` starts over, EOF exits.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};

use super::chat_image::ChatImages;
use super::command::{TextGen, TextGenArgs};
use super::conversation::Conversation;
use super::generate::StopReason;
use crate::runner::Pipeline;
use crate::toolchain::Layout;
use crate::util::status;

#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: TextGenArgs,
    /// One JSON report per turn, a line each (as generate --json), instead of streamed text.
    #[arg(long)]
    pub json: bool,
    /// An image for a vision-language bmodel (JPEG/PNG/WebP), part of the conversation;
    /// repeatable: the images go into the first user turn in order, each vit runs once.
    #[arg(long)]
    pub image: Vec<std::path::PathBuf>,
}

/// What one turn works on besides the line.
struct Turn<'a> {
    conversation: &'a mut Conversation,
    image: Option<&'a ChatImages>,
    templated: bool,
}

/// "> " on stderr, after the simulator's chatter.
fn prompt_mark() {
    crate::util::flush_c_stdio();
    eprint!("> ");
    let _ = std::io::stderr().flush();
}

impl ChatArgs {
    pub fn run(&self, layout: &Layout) -> Result<()> {
        let args = &self.common;
        let (mut tg, rt) = TextGen::open(args, layout)?;
        let mut pipeline = tg.pipeline(args, &rt)?;
        let image = ChatImages::open(&rt, &args.config, &tg.cfg, &self.image)?;
        if let Some(ci) = &image {
            status(format!(
                "image: {} tokens (vit {:.2} s){}, in the first user turn",
                ci.tokens(),
                ci.vit_seconds(),
                match ci.count() {
                    1 => String::new(),
                    n => format!(" for {n} images"),
                }
            ));
        }
        let limit = TextGen::limit(&pipeline);
        let templated = tg.cfg.template.is_some() && !args.no_template;
        if !templated {
            status(
                "note: no chat template in use: every line is a separate raw prompt (no history)",
            );
        }
        if pipeline.nets.history_kv() {
            status(format!(
                "chat: one line per turn, /clear starts over, end of input (Ctrl-D) exits. This \
                 history-KV bmodel keeps the conversation in its KV cache: each turn prefills only \
                 its new tokens (the conversation holds at most {limit} tokens)."
            ));
        } else {
            status(format!(
                "chat: one line per turn, /clear starts over, end of input (Ctrl-D) exits. This bmodel \
                 keeps no KV cache between turns: every turn re-reads the conversation (at most {limit} tokens)."
            ));
        }
        let mut conversation = Conversation::new(args.system.clone());
        if let Some(ci) = &image {
            conversation = conversation.with_image(ci.placeholder.clone(), ci.extra_tokens());
        }
        prompt_mark();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading stdin")?;
            let line = line.trim();
            if line == "/clear" {
                conversation.clear();
                status("(conversation cleared)");
            } else if !line.is_empty() {
                let turn = Turn {
                    conversation: &mut conversation,
                    image: image.as_ref(),
                    templated,
                };
                self.turn(&mut tg, &mut pipeline, turn, line)?;
            }
            prompt_mark();
        }
        status("");
        Ok(())
    }

    /// One turn: the prompt (the conversation, or the raw line), the reply, the status lines.
    /// A prompt that does not fit is reported and skipped.
    fn turn(
        &self,
        tg: &mut TextGen,
        pipeline: &mut Pipeline,
        turn: Turn,
        line: &str,
    ) -> Result<()> {
        let Turn {
            conversation,
            image,
            templated,
        } = turn;
        let limit = TextGen::limit(pipeline);
        let mut with_image = image.is_some();
        let ids = if templated {
            conversation.push_user(line);
            match conversation.prompt(&tg.cfg, limit) {
                Ok(p) => {
                    if p.dropped_exchanges > 0 {
                        status(format!(
                            "(the conversation no longer fits MAX_INPUT_LENGTH ({limit} tokens): dropped the oldest {} exchange(s))",
                            p.dropped_exchanges
                        ));
                    }
                    if with_image && !p.has_image {
                        status("(the image went with the first exchange)");
                    }
                    with_image = p.has_image;
                    p.ids
                }
                Err(e) => {
                    status(format!("{e:#}"));
                    return Ok(());
                }
            }
        } else {
            let ids = tg.cfg.encode(line, true)?;
            let image_tokens = image.map_or(0, ChatImages::framed_tokens);
            if ids.len() + image_tokens > limit {
                status(format!(
                    "this line is {} tokens; the bmodel takes at most {limit} (MAX_INPUT_LENGTH): send a shorter one",
                    ids.len() + image_tokens
                ));
                return Ok(());
            }
            ids
        };
        // The image's tokens and embeddings (and M-RoPE positions) at the placeholder: the
        // same placement every turn, so a re-prefill sees the image where the first did.
        let ids = match image.filter(|_| with_image) {
            Some(ci) => match ci.place(&ids) {
                Ok((ids, extras)) => {
                    pipeline.set_extras(extras);
                    ids
                }
                // A line with image placeholders of its own: the chat's images are fixed, so
                // this turn is skipped, not the chat.
                Err(e) => {
                    status(format!("{e:#}"));
                    if templated {
                        conversation.pop_user();
                    }
                    return Ok(());
                }
            },
            None => ids,
        };
        let g = tg.reply(pipeline, &ids, self.common.max_tokens, self.json)?;
        if self.json {
            let v = tg.generation_json(pipeline, &ids, &g);
            writeln!(tg.out, "{}", serde_json::to_string(&v)?)?;
            tg.out.flush()?;
        } else {
            writeln!(tg.out)?;
        }
        if templated {
            conversation.push_assistant(&g.text);
        }
        if g.stop_reason != StopReason::Eos {
            status(format!(
                "[stopped: {}]",
                g.stop_reason.describe(pipeline.nets.seq_length)
            ));
        }
        status(format!("[{}]", tg.timing_note(&g)));
        Ok(())
    }
}
