//! The statement comment tenant: `/* regionguard.tenant = 'acme' */` or
//! `-- regionguard.tenant = 'acme'`.
//!
//! Only real comments count (the tokenizer tells them apart from string
//! literals), so a literal that happens to contain the marker cannot steer
//! routing. sqlcommenter-style comments (`/*regionguard.tenant='acme',route='x'*/`)
//! work as well; their URL-encoding is not decoded.

/// The key looked for inside comments.
pub const TENANT_KEY: &str = "regionguard.tenant";

/// What the comments of one statement say about its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentTenant {
    /// No comment names a tenant.
    Absent,
    /// Every comment naming a tenant names this one.
    Tenant(String),
    /// Comments name different tenants, or the marker has no readable value.
    Invalid,
}

/// Reads the tenant named in one comment's text (`None`: no marker; `Some(None)`: a
/// marker without a readable value).
pub fn tenant_in_comment(comment: &str) -> Option<Option<String>> {
    let lower = comment.to_ascii_lowercase();
    let start = lower.find(TENANT_KEY)?;
    let rest = &comment[start + TENANT_KEY.len()..];
    let rest = rest.trim_start();
    let Some(rest) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) else {
        return Some(None);
    };
    let rest = rest.trim_start();
    let value = match rest.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let body = &rest[1..];
            body.find(q).map(|end| body[..end].to_string())
        }
        Some(_) => {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ',' || c == '*' || c == ';')
                .unwrap_or(rest.len());
            Some(rest[..end].to_string())
        }
        None => None,
    };
    Some(value.filter(|v| !v.is_empty()))
}

/// Combines the comments of one statement.
pub fn combine<'a>(comments: impl IntoIterator<Item = &'a str>) -> CommentTenant {
    let mut found: Option<String> = None;
    for comment in comments {
        match tenant_in_comment(comment) {
            None => {}
            Some(None) => return CommentTenant::Invalid,
            Some(Some(value)) => match &found {
                Some(previous) if *previous != value => return CommentTenant::Invalid,
                _ => found = Some(value),
            },
        }
    }
    match found {
        Some(v) => CommentTenant::Tenant(v),
        None => CommentTenant::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quoted_bare_and_sqlcommenter_values() {
        assert_eq!(
            tenant_in_comment(" regionguard.tenant = 'acme' "),
            Some(Some("acme".into()))
        );
        assert_eq!(
            tenant_in_comment("RegionGuard.Tenant=globex"),
            Some(Some("globex".into()))
        );
        assert_eq!(
            tenant_in_comment("regionguard.tenant='acme',controller='x'"),
            Some(Some("acme".into()))
        );
        assert_eq!(tenant_in_comment("nothing here"), None);
        assert_eq!(tenant_in_comment("regionguard.tenant"), Some(None));
        assert_eq!(tenant_in_comment("regionguard.tenant = ''"), Some(None));
    }

    #[test]
    fn disagreeing_comments_are_invalid() {
        assert_eq!(
            combine(["regionguard.tenant='a'", "x", "regionguard.tenant='a'"]),
            CommentTenant::Tenant("a".into())
        );
        assert_eq!(
            combine(["regionguard.tenant='a'", "regionguard.tenant='b'"]),
            CommentTenant::Invalid
        );
        assert_eq!(combine(["hello"]), CommentTenant::Absent);
    }
}
