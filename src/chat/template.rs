//! Hugging Face chat templates (Jinja) rendered with minijinja, configured as transformers'
//! `apply_chat_template` configures Jinja2: trim_blocks, lstrip_blocks, loop controls,
//! `raise_exception`, `strftime_now`, and Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()` ...) through minijinja-contrib's pycompat.

use anyhow::{Context, Result};
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    /// bos_token, eos_token, ... as the template sees them (strings).
    special: serde_json::Map<String, serde_json::Value>,
    /// Where the template came from, for error messages.
    origin: String,
}

impl ChatTemplate {
    /// Compiles `source`; `special` holds the special-token strings the template may use
    /// (bos_token, eos_token, pad_token, unk_token). `origin` names the file it came from.
    pub fn new(
        source: &str,
        special: serde_json::Map<String, serde_json::Value>,
        origin: &str,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .context("configuring the template syntax")?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .with_context(|| format!("the chat template in {origin} does not compile"))?;
        Ok(ChatTemplate {
            env,
            special,
            origin: origin.to_string(),
        })
    }

    /// The prompt text for `messages`, ending with the assistant's header when
    /// `add_generation_prompt` (what the model then continues).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut ctx = self.special.clone();
        ctx.insert("messages".into(), serde_json::to_value(messages)?);
        ctx.insert(
            "add_generation_prompt".into(),
            serde_json::Value::Bool(add_generation_prompt),
        );
        let template = self.env.get_template(NAME)?;
        template
            .render(Value::from(Serde(&ctx)))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .with_context(|| format!("rendering the chat template of {}", self.origin))
    }
}

/// `raise_exception(msg)`: templates call it to refuse a conversation (e.g. roles that do not
/// alternate); the message reaches the user.
fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("the chat template refused the conversation: {msg}"),
    ))
}

/// `strftime_now(fmt)` (Llama 3 templates put today's date in the system prompt): UTC, with
/// the directives those templates use (%d %m %Y %y %b %B %H %M %S %%).
fn strftime_now(fmt: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Value::from(strftime(&fmt, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn strftime(fmt: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('b') => out += &name[..3],
            Some('B') => out += name,
            Some('H') => out += &format!("{:02}", rem / 3600),
            Some('M') => out += &format!("{:02}", rem / 60 % 60),
            Some('S') => out += &format!("{:02}", rem % 60),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("bos_token".into(), "<s>".into());
        m.insert("eos_token".into(), "</s>".into());
        m
    }

    #[test]
    fn chatml_with_python_methods_and_whitespace_control() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n<|{{ m.role }}|>{{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let t = ChatTemplate::new(src, special(), "test").unwrap();
        let msgs = [
            Message::new("system", "sys"),
            Message::new("user", "  hi  "),
            Message::new("assistant", "yo"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<s><|user|>hi</s>\n<|assistant|>yo</s>\n<|assistant|>"
        );
        assert_eq!(t.render(&msgs[..2], false).unwrap(), "<s><|user|>hi</s>\n");
    }

    #[test]
    fn raise_exception_reaches_the_user() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}ok";
        let t = ChatTemplate::new(src, special(), "tokenizer_config.json").unwrap();
        let err = format!(
            "{:#}",
            t.render(&[Message::new("assistant", "x")], true)
                .unwrap_err()
        );
        assert!(err.contains("roles must alternate"), "{err}");
        assert!(err.contains("tokenizer_config.json"), "{err}");
        assert_eq!(t.render(&[Message::new("user", "x")], true).unwrap(), "ok");
    }

    #[test]
    fn a_broken_template_names_its_file() {
        let err = ChatTemplate::new("{% for %}", special(), "x/tokenizer_config.json")
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("x/tokenizer_config.json"));
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:25:09 UTC
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %B %m %y %%", 1_722_000_309),
            "26 Jul 2024 13:25:09 July 07 24 %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    }
}
