//! The version string a bmodel carries (`Model.version`): `2.2+v1.30.2-20260831` is bmodel
//! format 2.2 written by TPU-MLIR 1.30.2 (built on 2026-08-31). `model_tool --info` prints it
//! as `bmodel version: B.2.2+v1.30.2-20260831`; both spellings parse.

/// A parsed `Model.version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmodelVersion {
    /// The whole string, as stored.
    pub raw: String,
    /// The format version (`2.2`), before `+`: what libbmrt's `BMODEL_VERSION` is compared with.
    pub format: Option<String>,
    /// The compiler's release after `+v` (`1.30.2`), without the build suffix.
    pub compiler: Option<String>,
}

impl BmodelVersion {
    pub fn parse(raw: &str) -> BmodelVersion {
        let (format_part, compiler_part) = match raw.split_once('+') {
            Some((f, c)) => (f, Some(c)),
            None => (raw, None),
        };
        let format = Some(format_part.strip_prefix("B.").unwrap_or(format_part))
            .filter(|f| is_dotted_number(f))
            .map(str::to_string);
        let compiler = compiler_part
            .and_then(|c| c.strip_prefix('v'))
            .map(|c| c.split(['-', '+']).next().unwrap_or(c))
            .filter(|c| is_dotted_number(c))
            .map(str::to_string);
        BmodelVersion {
            raw: raw.to_string(),
            format,
            compiler,
        }
    }
}

/// `2.2`, `1.30.2`: digits separated by single dots.
pub fn is_dotted_number(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The first `X.Y.Z` (or `X.Y`) in a free-form version text, e.g. a driver's
/// `release version:0.5.1 ...`.
pub fn first_dotted_number(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|t| t.trim_matches('.'))
        .find(|t| t.contains('.') && is_dotted_number(t))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_tpu_mlir_writes() {
        let v = BmodelVersion::parse("2.2+v1.30.2-20260831");
        assert_eq!(v.format.as_deref(), Some("2.2"));
        assert_eq!(v.compiler.as_deref(), Some("1.30.2"));
        assert_eq!(BmodelVersion::parse("B.2.2+v1.30.2-20260831"), {
            BmodelVersion {
                raw: "B.2.2+v1.30.2-20260831".into(),
                ..v
            }
        });
        let v = BmodelVersion::parse("B.2.2+v1.8.beta.0-89-g32b7f39b8-20240620");
        assert_eq!(v.format.as_deref(), Some("2.2"));
        assert_eq!(v.compiler, None, "1.8.beta.0 is not a release number");
        let v = BmodelVersion::parse("garbage");
        assert_eq!((v.format, v.compiler), (None, None));
    }

    #[test]
    fn finds_a_version_in_free_text() {
        assert_eq!(
            first_dotted_number("release version:0.5.1 release date: 20240301").as_deref(),
            Some("0.5.1")
        );
        assert_eq!(
            first_dotted_number("libsophon-0.4.9").as_deref(),
            Some("0.4.9")
        );
        assert_eq!(first_dotted_number("none here"), None);
    }
}
