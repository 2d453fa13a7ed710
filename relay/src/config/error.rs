//! Configuration errors that name the key, the line and what is wrong, so the operator
//! can fix the file without reading the source.

use std::path::PathBuf;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a key/value has the wrong name or type.
    #[error("{origin}: line {line}: {key}: {message}")]
    Syntax {
        /// File name (or "embedded default").
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// Dotted key path, e.g. `server.listen` (or "(document)" when unknown).
        key: String,
        /// What is wrong (from the TOML parser / serde).
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// File name, "embedded default" or "command line".
        origin: String,
        /// Dotted key path with index, e.g. `server.listen[1]`.
        key: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

/// Turns a toml/serde error into one naming the key path and line.
pub(super) fn from_toml(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return ConfigError::Syntax {
            origin: origin.to_owned(),
            line: 1,
            key: "(document)".to_owned(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let line = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
    ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        key: key_path(text, line),
        message,
    }
}

/// The dotted key path of the key written on (or continued onto) `line` (1-based).
fn key_path(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let upto = line.min(lines.len());
    let mut key: Option<String> = None;
    let mut table: Option<String> = None;
    // Walk back from the error line: the first `key =` found is the key (a multi-line
    // array continues its key), the first `[table]` header is its table.
    for l in lines[..upto].iter().rev() {
        let t = l.trim();
        if let Some(h) = header(t) {
            if key.is_none() {
                // The error is on the header itself (e.g. an unknown section).
                return h;
            }
            table = Some(h);
            break;
        }
        if key.is_none()
            && let Some((k, _)) = t.split_once('=')
            && !t.starts_with('#')
        {
            key = Some(k.trim().trim_matches('"').to_owned());
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "(document)".to_owned(),
    }
}

/// The table name of a `[table]` or `[[array]]` header line.
fn header(t: &str) -> Option<String> {
    let inner = t.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    Some(inner[..end].trim().to_owned())
}
