//! Teacher-side prompts: the view of an example that a teacher reads. An instruct teacher
//! scores best inside its chat template; the student keeps reading the plain input.
//!
//! A [`TeacherView`] turns an example's input ids into the teacher's prompt ids: `raw`
//! (the input itself), `chat` (the checkpoint's Jinja chat template with one user turn and
//! the generation prompt, rendered as transformers' `apply_chat_template` does: trim and
//! lstrip blocks, `raise_exception`, Python string methods) or `plain` (a text template
//! with one `{input}`). The input is decoded to text, placed in the template and the whole
//! string tokenized again without added special tokens, so the ids equal what transformers
//! gives for the same text (a template that trims its content, or merges it with the text
//! around it, is handled exactly). Targets are appended after the prompt unchanged, so the
//! teacher position that predicts target token `t` is `len(prompt) - 1 + t`.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, context};
use serde_json::Value;

use crate::error::{Error, Result, read_json};
use crate::tokenizer::{Tokenizer, sha256_hex};

/// `tokenizer_config.json`: where Hugging Face checkpoints keep the chat template.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// The placeholder of a plain template.
pub const INPUT_PLACEHOLDER: &str = "{input}";

/// A checkpoint's chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    /// Where it came from, for messages.
    pub origin: PathBuf,
}

/// A token field of `tokenizer_config.json`: a string, or an AddedToken object.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of a checkpoint folder (its `tokenizer_config.json`), of the folder
    /// holding a `tokenizer.json` file, or of a `.gguf` file's metadata; `None` when it has
    /// none.
    pub fn find(path: &Path) -> Result<Option<Self>> {
        if crate::gguf::is_gguf(path) {
            let Some(config) = crate::gguf::tokenizer_config(path)? else {
                return Ok(None);
            };
            return Self::from_tokenizer_config(&config, path);
        }
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        let config = dir.join(TOKENIZER_CONFIG);
        if !config.is_file() {
            return Ok(None);
        }
        let value: Value = read_json(&config)?;
        Self::from_tokenizer_config(&value, &config)
    }

    /// From a parsed `tokenizer_config.json`. `chat_template` is a string, or a list of
    /// `{name, template}` of which `default` is used.
    pub fn from_tokenizer_config(value: &Value, origin: &Path) -> Result<Option<Self>> {
        let source = match value.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .ok_or_else(|| Error::Config {
                    path: origin.to_owned(),
                    field: "chat_template",
                    msg: "a list of named templates without one named `default`".into(),
                })?
                .to_owned(),
            Some(other) => {
                return Err(Error::Config {
                    path: origin.to_owned(),
                    field: "chat_template",
                    msg: format!("expected a string or a list, found {other}"),
                });
            }
        };
        Ok(Some(Self {
            source,
            bos_token: token_text(value.get("bos_token")),
            eos_token: token_text(value.get("eos_token")),
            origin: origin.to_owned(),
        }))
    }

    /// Renders one user turn (after an optional system turn) followed by the generation
    /// prompt, as `apply_chat_template(..., add_generation_prompt=True)` does.
    pub fn render_user_turn(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let bad = |e: minijinja::Error| Error::Config {
            path: self.origin.clone(),
            field: "chat_template",
            msg: format!("{e:#}"),
        };
        env.add_template("chat", &self.source).map_err(bad)?;
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(context! { role => "system", content => s });
        }
        messages.push(context! { role => "user", content => user });
        env.get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
            })
            .map_err(bad)
    }

    /// sha256 of the template text, to tell two views apart.
    pub fn sha256(&self) -> String {
        sha256_hex(self.source.as_bytes())
    }
}

/// Which view to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    Raw,
    Chat,
    Plain,
}

impl std::str::FromStr for ViewKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Self::Raw),
            "chat" => Ok(Self::Chat),
            "plain" => Ok(Self::Plain),
            _ => Err(Error::Input(format!(
                "teacher prompt `{s}`: expected raw, chat or plain"
            ))),
        }
    }
}

/// What a view is made from (a run's config, or command-line flags).
#[derive(Debug, Clone)]
pub struct ViewSpec {
    pub kind: ViewKind,
    /// The teacher's `tokenizer.json` (needed by chat and plain views).
    pub tokenizer: Option<PathBuf>,
    /// Where to look for the chat template, in order (`tokenizer_config.json` files or
    /// folders holding one); the tokenizer's folder is tried last.
    pub template_places: Vec<PathBuf>,
    pub system: Option<String>,
    /// The plain template, with one `{input}`; with a chat view, the user turn's text
    /// (an instruction around the input), when not empty.
    pub plain: String,
}

fn check_placeholder(template: &str) -> Result<()> {
    let n = template.matches(INPUT_PLACEHOLDER).count();
    if n != 1 {
        return Err(Error::Input(format!(
            "teacher prompt template: expected exactly one {INPUT_PLACEHOLDER}, found {n} in \
             {template:?}"
        )));
    }
    Ok(())
}

enum Style {
    Raw,
    Chat {
        template: ChatTemplate,
        system: Option<String>,
        /// The user turn's text around the input (`{input}` once); the input alone if None.
        content: Option<String>,
    },
    Plain {
        template: String,
    },
}

/// How a teacher reads an example's input.
pub struct TeacherView {
    style: Style,
    tokenizer: Option<Tokenizer>,
}

impl std::fmt::Debug for TeacherView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TeacherView({})", self.describe())
    }
}

impl TeacherView {
    /// Builds the view `spec` describes, with errors naming what is missing.
    pub fn from_spec(spec: &ViewSpec) -> Result<Self> {
        if spec.kind == ViewKind::Raw {
            return Ok(Self::raw());
        }
        let path = spec.tokenizer.as_deref().ok_or_else(|| {
            Error::Input("a chat or plain teacher prompt needs the teacher's tokenizer".into())
        })?;
        let tok = Tokenizer::from_file(path)?;
        if spec.kind == ViewKind::Plain {
            return Self::plain(&spec.plain, tok);
        }
        let mut places = spec.template_places.clone();
        places.push(path.to_path_buf());
        for place in &places {
            if let Some(template) = ChatTemplate::find(place)? {
                let view = Self::chat(template, spec.system.clone(), tok);
                return if spec.plain.is_empty() {
                    Ok(view)
                } else {
                    view.with_user_text(&spec.plain)
                };
            }
        }
        let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
        Err(Error::Input(format!(
            "chat teacher prompt: no chat template found (looked for {TOKENIZER_CONFIG} with a \
             `chat_template` at {})",
            looked.join(", ")
        )))
    }

    /// The input as it is.
    pub fn raw() -> Self {
        Self {
            style: Style::Raw,
            tokenizer: None,
        }
    }

    /// The input as the user turn of the teacher's chat template.
    pub fn chat(template: ChatTemplate, system: Option<String>, tokenizer: Tokenizer) -> Self {
        Self {
            style: Style::Chat {
                template,
                system,
                content: None,
            },
            tokenizer: Some(tokenizer),
        }
    }

    /// A chat view whose user turn is `text` with the input at its one `{input}` (an
    /// instruction for the teacher); other views are returned unchanged.
    pub fn with_user_text(mut self, text: &str) -> Result<Self> {
        check_placeholder(text)?;
        if let Style::Chat { content, .. } = &mut self.style {
            *content = Some(text.to_owned());
        }
        Ok(self)
    }

    /// The input inside a text template with exactly one `{input}`.
    pub fn plain(template: &str, tokenizer: Tokenizer) -> Result<Self> {
        check_placeholder(template)?;
        Ok(Self {
            style: Style::Plain {
                template: template.to_owned(),
            },
            tokenizer: Some(tokenizer),
        })
    }

    pub fn is_raw(&self) -> bool {
        matches!(self.style, Style::Raw)
    }

    /// One line saying which view this is (recorded next to teacher caches).
    pub fn describe(&self) -> String {
        match &self.style {
            Style::Raw => "raw".into(),
            Style::Chat {
                template,
                system,
                content,
            } => format!(
                "chat (template sha256 {}, from {}{}{})",
                &template.sha256()[..16],
                template.origin.display(),
                system
                    .as_ref()
                    .map(|s| format!(", system prompt {s:?}"))
                    .unwrap_or_default(),
                content
                    .as_ref()
                    .map(|c| format!(", user turn {c:?}"))
                    .unwrap_or_default()
            ),
            Style::Plain { template } => format!("plain {template:?}"),
        }
    }

    /// A short stable identity of the view, the same on any machine (recorded in teacher
    /// caches, so a trainer can refuse a cache made with another view): `raw`,
    /// `chat:<template sha256>:<system sha256 or ->` or `plain:<template sha256>`, each sha256
    /// cut to 16 hex digits.
    pub fn key(&self) -> String {
        let short = |s: &str| sha256_hex(s.as_bytes())[..16].to_owned();
        match &self.style {
            Style::Raw => "raw".into(),
            Style::Chat {
                template,
                system,
                content,
            } => {
                let mut key = format!(
                    "chat:{}:{}",
                    &template.sha256()[..16],
                    system.as_deref().map_or("-".into(), short)
                );
                if let Some(c) = content {
                    key += &format!(":{}", short(c));
                }
                key
            }
            Style::Plain { template } => format!("plain:{}", short(template)),
        }
    }

    /// The prompt text for an input text.
    pub fn render(&self, input: &str) -> Result<String> {
        match &self.style {
            Style::Raw => Ok(input.to_owned()),
            Style::Chat {
                template,
                system,
                content,
            } => {
                let user = match content {
                    Some(c) => c.replacen(INPUT_PLACEHOLDER, input, 1),
                    None => input.to_owned(),
                };
                template.render_user_turn(system.as_deref(), &user)
            }
            Style::Plain { template } => Ok(template.replacen(INPUT_PLACEHOLDER, input, 1)),
        }
    }

    /// The teacher's prompt ids for an example's input ids.
    pub fn prompt(&self, input_ids: &[u32]) -> Result<Vec<u32>> {
        let Some(tok) = &self.tokenizer else {
            return Ok(input_ids.to_vec());
        };
        let ids: Vec<i64> = input_ids.iter().map(|&i| i64::from(i)).collect();
        let text = tok.decode(&ids, false)?;
        let prompt = self.render(&text)?;
        Ok(tok
            .encode(&prompt, false)?
            .into_iter()
            .map(|i| i as u32)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] \
        != 'system' %}{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}\
        {{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + \
        '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn template(src: &str) -> ChatTemplate {
        ChatTemplate::from_tokenizer_config(
            &serde_json::json!({"chat_template": src, "bos_token": {"content": "<s>"}}),
            Path::new("t.json"),
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn chat_templates_render_like_apply_chat_template() {
        let t = template(CHATML);
        assert_eq!(t.bos_token, "<s>");
        assert_eq!(
            t.render_user_turn(None, "  Hi there ").unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(
            t.render_user_turn(Some("Sys"), "x").unwrap(),
            "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nx<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_name_the_file_and_the_field() {
        let t = template("{{ raise_exception('only user turns') }}");
        let e = t.render_user_turn(None, "x").unwrap_err().to_string();
        assert!(e.contains("t.json") && e.contains("chat_template"), "{e}");
        assert!(e.contains("only user turns"), "{e}");
        let t = template("{% for %}");
        assert!(t.render_user_turn(None, "x").is_err());
        let none = ChatTemplate::from_tokenizer_config(&serde_json::json!({}), Path::new("t"));
        assert!(none.unwrap().is_none());
        let named = serde_json::json!({"chat_template": [{"name": "default", "template": "D"},
            {"name": "tool_use", "template": "T"}]});
        let t = ChatTemplate::from_tokenizer_config(&named, Path::new("t"))
            .unwrap()
            .unwrap();
        assert_eq!(t.source, "D");
    }

    #[test]
    fn templates_need_exactly_one_placeholder() {
        assert!(check_placeholder("no placeholder").is_err());
        let e = check_placeholder("{input} and {input}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("found 2"), "{e}");
        assert!(check_placeholder("Summarize:\n{input}\nSummary:").is_ok());
    }
}
