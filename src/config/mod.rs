//! The TOML configuration: model, `${ENV}` interpolation and validation.
//!
//! The model is strict (`deny_unknown_fields`) so a typo in a key is an error
//! at load time instead of a setting that silently does nothing.

mod interpolate;
mod model;
mod validate;

pub use model::*;

use serde::Deserialize;
use std::path::Path;

/// Why a configuration could not be used. Every message names the key or the
/// file involved and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Interpolate(String),
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads, interpolates, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        config.source_path = Some(path.to_path_buf());
        config.source_sha256 = Some(crate::admin::audit::sha256_hex(text.as_bytes()));
        Ok(config)
    }

    /// Parses config text; `origin` names the source in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        };
        let mut value: toml::Value = toml::from_str(text).map_err(parse_error)?;
        interpolate::interpolate_value(&mut value, "", &|name| std::env::var(name).ok())?;
        let config = Config::deserialize(value).map_err(parse_error)?;
        validate::validate(&config)?;
        Ok(config)
    }
}
