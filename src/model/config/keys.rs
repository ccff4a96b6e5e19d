//! Typed accessors over a `config.json` object whose errors name the file and the key.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::InputError;

/// One config.json's keys, read by the generic config code and by each family's own reader.
pub struct ConfigKeys<'a> {
    obj: &'a Map<String, Value>,
    path: PathBuf,
    /// Where `obj` sits in the file (`vision_config.`), for error messages; empty at the top.
    scope: String,
}

impl<'a> ConfigKeys<'a> {
    pub fn new(obj: &'a Map<String, Value>, path: &Path) -> ConfigKeys<'a> {
        ConfigKeys {
            obj,
            path: path.to_path_buf(),
            scope: String::new(),
        }
    }

    /// The keys of `obj`, an object nested under `name` (errors say `name.key`).
    pub fn nested<'b>(&self, obj: &'b Map<String, Value>, name: &str) -> ConfigKeys<'b> {
        ConfigKeys {
            obj,
            path: self.path.clone(),
            scope: format!("{}{name}.", self.scope),
        }
    }

    /// The whole object.
    pub fn object(&self) -> &'a Map<String, Value> {
        self.obj
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about `key` in this file.
    pub fn bad(&self, key: &str, problem: impl Into<String>, fix: impl Into<String>) -> InputError {
        InputError::invalid(
            &self.path,
            format!("key \"{}{key}\": {}", self.scope, problem.into()),
            fix,
        )
    }

    /// The key's value, unless it is absent or null.
    pub fn present(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> InputError {
        self.bad(
            key,
            "missing",
            format!("add \"{key}\" to config.json (copy it from the original model's config)"),
        )
    }

    pub fn req_str(&self, key: &str) -> Result<String, InputError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>, InputError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.bad(key, format!("expected a string, got {v}"), "fix its type")),
        }
    }

    pub fn req_usize(&self, key: &str) -> Result<usize, InputError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, InputError> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0 || key.ends_with("token_id"))
                .filter(|n| !key.ends_with("token_id") || *n <= u32::MAX as u64)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    self.bad(
                        key,
                        format!("expected a positive integer, got {v}"),
                        "fix its value",
                    )
                }),
        }
    }

    /// A positive integer that may be null (= none): `default` only when the key is absent.
    pub fn nullable_usize(
        &self,
        key: &str,
        default: Option<usize>,
    ) -> Result<Option<usize>, InputError> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => self.opt_usize(key),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, InputError> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.bad(key, format!("expected a number, got {v}"), "fix its value")
            }),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, InputError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(
                key,
                format!("expected true/false, got {v}"),
                "fix its value",
            )),
        }
    }

    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>, InputError> {
        match self.present(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            self.bad(key, format!("expected token ids, got {v}"), "fix its value")
                        })
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| vec![n])
                .ok_or_else(|| {
                    self.bad(
                        key,
                        format!("expected a token id, got {v}"),
                        "fix its value",
                    )
                }),
        }
    }

    /// The raw value (for keys kept verbatim).
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.obj.get(key)
    }
}
