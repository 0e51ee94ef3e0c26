//! `${NAME}` substitution from the environment, so secrets stay out of the
//! config file. `$${` writes a literal `${`.

use super::ConfigError;

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`. A reference to an
/// unset variable is an error naming the variable and its line.
pub(crate) fn interpolate_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| {
                    ConfigError::Interpolate(format!(
                        "line {}: unterminated ${{ in config (write $${{ for a literal)",
                        lineno + 1
                    ))
                })?;
                let name = &body[..end];
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(ConfigError::Interpolate(format!(
                        "line {}: `${{{name}}}` is not a valid environment variable reference",
                        lineno + 1
                    )));
                }
                let value = lookup(name).ok_or_else(|| {
                    ConfigError::Interpolate(format!(
                        "line {}: environment variable {name} is not set",
                        lineno + 1
                    ))
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
    fn unset_variable_names_it_and_the_line() {
        let err = interpolate_env("a = 1\nb = \"${NOPE}\"\n", env).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NOPE") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn bad_reference_is_an_error() {
        assert!(interpolate_env("x = \"${a-b}\"", env).is_err());
        assert!(interpolate_env("x = \"${open", env).is_err());
    }
}
