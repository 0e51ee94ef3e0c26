//! `${NAME}` substitution from the environment, so secrets stay out of the
//! config file. `$${` writes a literal `${`.
//!
//! Substitution happens in string values after TOML parsing, never in the
//! raw text: comments may mention `${…}`, and a secret containing quotes
//! cannot change the file's structure.

use super::ConfigError;

/// Replaces `${NAME}` in every string value of `value`; errors name the key.
pub(crate) fn interpolate_value(
    value: &mut toml::Value,
    path: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            *s = interpolate_env(s, lookup)
                .map_err(|e| ConfigError::invalid(path, e.to_string()))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_value(v, &sub, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`. A reference to an
/// unset variable is an error naming the variable.
pub(crate) fn interpolate_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| {
                    ConfigError::Interpolate(
                        "unterminated ${ (write $${ for a literal)".to_string(),
                    )
                })?;
                let name = &body[..end];
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(ConfigError::Interpolate(format!(
                        "`${{{name}}}` is not a valid environment variable reference"
                    )));
                }
                let value = lookup(name).ok_or_else(|| {
                    ConfigError::Interpolate(format!("environment variable {name} is not set"))
                })?;
                out.push_str(&value);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PW").then(|| "s3cret".to_string())
    }

    #[test]
    fn substitutes_and_escapes() {
        let out = interpolate_env("a = \"${PW}\"\nb = \"$${PW} $x\"\n", env).unwrap();
        assert_eq!(out, "a = \"s3cret\"\nb = \"${PW} $x\"\n");
    }

    #[test]
    fn unset_variable_names_it_and_the_key() {
        let mut v: toml::Value =
            toml::from_str("[a]\nb = [\"${NOPE}\"]\n# ${IN_COMMENT}\n").unwrap();
        let err = interpolate_value(&mut v, "", &env).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NOPE") && msg.contains("a.b[0]"), "{msg}");
    }

    #[test]
    fn bad_reference_is_an_error() {
        assert!(interpolate_env("x = \"${a-b}\"", env).is_err());
        assert!(interpolate_env("x = \"${open", env).is_err());
    }
}
