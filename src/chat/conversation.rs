//! A multi-turn conversation for bmodels without history KV: every turn re-prefills the whole
//! conversation (as LLM-TPU's pipeline.py does), so it must fit in MAX_INPUT_LENGTH; the
//! oldest exchanges are dropped when it does not.

use anyhow::{bail, Result};

use super::config::ChatConfig;
use super::template::Message;

#[derive(Default)]
pub struct Conversation {
    system: Option<String>,
    /// user, assistant, user, ... (ends with a user turn while one is pending).
    turns: Vec<Message>,
    /// `chat --image`: the placeholder text the first user turn starts with, and the tokens
    /// its image adds once expanded (they count against the limit).
    image: Option<(String, usize)>,
    /// The first turn still holds the image (dropping its exchange drops the image).
    image_attached: bool,
}

/// The prompt for the pending turn.
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Earlier user/assistant exchanges dropped to fit.
    pub dropped_exchanges: usize,
    /// The prompt holds the conversation's image (its placeholder, not yet expanded).
    pub has_image: bool,
}

impl Conversation {
    pub fn new(system: Option<String>) -> Conversation {
        Conversation {
            system,
            turns: Vec::new(),
            image: None,
            image_attached: false,
        }
    }

    /// The conversation's first user turn starts with `placeholder`, an image that expands
    /// to `extra_tokens` more tokens than the placeholder has (again after `clear`).
    pub fn with_image(mut self, placeholder: String, extra_tokens: usize) -> Conversation {
        self.image = Some((placeholder, extra_tokens));
        self.image_attached = true;
        self
    }

    pub fn clear(&mut self) {
        self.turns.clear();
        self.image_attached = self.image.is_some();
    }

    pub fn push_user(&mut self, text: &str) {
        self.turns.push(Message::new("user", text));
    }

    pub fn push_assistant(&mut self, text: &str) {
        self.turns.push(Message::new("assistant", text));
    }

    /// Forgets a user turn that got no answer.
    pub fn pop_user(&mut self) {
        if self.turns.last().is_some_and(|m| m.role == "user") {
            self.turns.pop();
        }
    }

    /// System message + turns from `skip` on.
    fn messages(&self, skip: usize) -> Vec<Message> {
        let mut m: Vec<Message> = self
            .system
            .iter()
            .map(|s| Message::new("system", s))
            .collect();
        m.extend(self.turns[skip..].iter().cloned());
        if let (0, true, Some((placeholder, _))) = (skip, self.image_attached, &self.image) {
            if let Some(first) = m.iter_mut().find(|t| t.role == "user") {
                first.content = format!("{placeholder}{}", first.content);
            }
        }
        m
    }

    /// Renders the conversation with the generation prompt and tokenizes it, dropping the
    /// oldest exchanges while it has more than `limit` tokens. When even the last user turn
    /// alone is too long, that turn is forgotten (the history stays) and this fails.
    pub fn prompt(&mut self, cfg: &ChatConfig, limit: usize) -> Result<Prompt> {
        let Some(template) = &cfg.template else {
            bail!("conversation without a chat template");
        };
        let mut skip = 0;
        loop {
            let text = template.render(&self.messages(skip), true)?;
            let ids = cfg.encode(&text, false)?;
            let has_image = skip == 0 && self.image_attached;
            let image_tokens = match (&self.image, has_image) {
                (Some((_, extra)), true) => *extra,
                _ => 0,
            };
            if ids.len() + image_tokens <= limit {
                self.turns.drain(..skip);
                self.image_attached = has_image;
                return Ok(Prompt {
                    ids,
                    dropped_exchanges: skip / 2,
                    has_image,
                });
            }
            // Keep the pending user turn: drop whole user/assistant exchanges before it.
            if skip + 2 >= self.turns.len() {
                self.pop_user();
                bail!(
                    "this message is {} tokens with the chat template; the bmodel takes at most {limit} (MAX_INPUT_LENGTH): send a shorter one",
                    ids.len() + image_tokens
                );
            }
            skip += 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::test_util::byte_tokenizer;
    use crate::chat::ChatTemplate;

    #[test]
    fn the_image_stays_in_the_first_user_turn_until_its_exchange_is_dropped() {
        let cfg = config();
        let mut c = Conversation::new(None).with_image("<I>".into(), 5);
        c.push_user("a");
        let p = c.prompt(&cfg, 40).unwrap();
        assert!(p.has_image);
        assert_eq!(
            cfg.tokenizer.decode(&p.ids, false).unwrap(),
            "[user]<I>a[assistant]"
        );
        c.push_assistant("b");
        c.push_user("c");
        // 40 tokens + 5 for the image.
        let p = c.prompt(&cfg, 45).unwrap();
        assert_eq!(p.dropped_exchanges, 0);
        assert!(p.has_image);
        assert_eq!(
            cfg.tokenizer.decode(&p.ids, false).unwrap(),
            "[user]<I>a[assistant]b[user]c[assistant]"
        );
        // 59 tokens + 5 for the image do not fit 60: the image's exchange goes, and the image.
        c.push_assistant("d");
        c.push_user("e");
        let p = c.prompt(&cfg, 60).unwrap();
        assert_eq!((p.dropped_exchanges, p.has_image), (1, false));
        c.push_assistant("f");
        c.push_user("g");
        assert!(!c.prompt(&cfg, 100).unwrap().has_image);
        // A new conversation gets the image again.
        c.clear();
        c.push_user("h");
        assert!(c.prompt(&cfg, 100).unwrap().has_image);
    }

    fn config() -> ChatConfig {
        let template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
        ChatConfig {
            source: "cfg".into(),
            tokenizer: byte_tokenizer(),
            template: Some(ChatTemplate::new(template, Default::default(), "t").unwrap()),
            eos_ids: Default::default(),
            generation: Default::default(),
        }
    }

    #[test]
    fn oldest_exchanges_go_first_and_an_oversized_turn_keeps_the_history() {
        let cfg = config();
        let mut c = Conversation::new(Some("S".into()));
        c.push_user("aaaa");
        let p = c.prompt(&cfg, 40).unwrap();
        // "[system]S[user]aaaa[assistant]": one byte-level token per byte.
        assert_eq!(p.ids.len(), 30);
        assert_eq!(p.dropped_exchanges, 0);
        c.push_assistant("bb");
        c.push_user("cc");
        // 30 + "bb" + "[user]cc" + "[assistant]" ... over 40: the first exchange goes.
        let p = c.prompt(&cfg, 40).unwrap();
        assert_eq!(p.dropped_exchanges, 1);
        assert_eq!(
            cfg.tokenizer.decode(&p.ids, false).unwrap(),
            "[system]S[user]cc[assistant]"
        );
        c.push_assistant("dd");
        c.push_user(&"x".repeat(50));
        let err = c.prompt(&cfg, 40).err().unwrap().to_string();
        assert!(err.contains("at most 40"), "{err}");
        // The oversized turn is gone, the earlier exchange is not.
        c.push_user("e");
        let p = c.prompt(&cfg, 100).unwrap();
        assert_eq!(
            cfg.tokenizer.decode(&p.ids, false).unwrap(),
            "[system]S[user]cc[assistant]dd[user]e[assistant]"
        );
    }
}
