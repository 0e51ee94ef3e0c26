//! The closed sets of label values the metrics use, and how proxy events map
//! onto them.
//!
//! Every label value comes from a fixed list (or the config: region names
//! and hosts), never from a client: a label set that grows with tenants,
//! statements or values would blow up Prometheus and could leak data
//! (DESIGN.md promise 3).

use crate::protocol::error::{sqlstate, PgError};

/// What a statement did, read from its CommandComplete tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Read,
    Write,
    Ddl,
    Other,
}

impl StatementKind {
    pub const ALL: [StatementKind; 4] = [Self::Read, Self::Write, Self::Ddl, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Other => "other",
        }
    }

    /// The kind of a completed statement from its command tag (`SELECT 3`,
    /// `INSERT 0 1`, `CREATE TABLE`…). Reading the tag instead of the
    /// analysis counts what the region actually ran, in one place, with a
    /// few byte comparisons. `COPY` is a write when it was a COPY FROM
    /// (`copy_in`), a read otherwise.
    pub fn from_command_tag(tag: &[u8], copy_in: bool) -> StatementKind {
        let word = tag.split(|&b| b == b' ' || b == 0).next().unwrap_or(b"");
        match word {
            b"SELECT" | b"FETCH" | b"SHOW" | b"EXPLAIN" | b"VALUES" | b"TABLE" => Self::Read,
            b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"TRUNCATE" => Self::Write,
            b"COPY" if copy_in => Self::Write,
            b"COPY" => Self::Read,
            b"CREATE" | b"ALTER" | b"DROP" | b"COMMENT" | b"GRANT" | b"REVOKE" | b"REINDEX"
            | b"CLUSTER" | b"SECURITY" | b"REFRESH" | b"IMPORT" => Self::Ddl,
            _ => Self::Other,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a client connection was refused before its session started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRefusal {
    /// `listen.max_clients` reached.
    MaxClients,
    /// Startup and authentication took longer than `listen.startup_timeout_secs`.
    StartupTimeout,
    /// Unknown user or wrong password (28P01).
    AuthFailed,
    /// TLS required, no user name, … (28000).
    Unauthorized,
    /// A malformed startup or authentication exchange (08P01).
    Protocol,
    /// Something RegionGuard does not offer: replication, non-UTF-8 encodings (0A000).
    Unsupported,
    /// An unknown or invalid startup parameter (42704, 22023).
    BadParameter,
    /// The session's region could not be reached (08006).
    RegionUnavailable,
    /// The proxy is shutting down (57P01, 57P03).
    ShuttingDown,
    Other,
}

impl ClientRefusal {
    pub const ALL: [ClientRefusal; 10] = [
        Self::MaxClients,
        Self::StartupTimeout,
        Self::AuthFailed,
        Self::Unauthorized,
        Self::Protocol,
        Self::Unsupported,
        Self::BadParameter,
        Self::RegionUnavailable,
        Self::ShuttingDown,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxClients => "max_clients",
            Self::StartupTimeout => "startup_timeout",
            Self::AuthFailed => "auth_failed",
            Self::Unauthorized => "unauthorized",
            Self::Protocol => "protocol",
            Self::Unsupported => "unsupported",
            Self::BadParameter => "bad_parameter",
            Self::RegionUnavailable => "region_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Other => "other",
        }
    }

    /// The reason for a startup refusal, from the SQLSTATE the client got.
    pub fn from_sqlstate(code: &str) -> ClientRefusal {
        match code {
            sqlstate::TOO_MANY_CONNECTIONS => Self::MaxClients,
            sqlstate::INVALID_PASSWORD => Self::AuthFailed,
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION => Self::Unauthorized,
            sqlstate::PROTOCOL_VIOLATION | sqlstate::PROGRAM_LIMIT_EXCEEDED => Self::Protocol,
            sqlstate::FEATURE_NOT_SUPPORTED => Self::Unsupported,
            "42704" | sqlstate::INVALID_PARAMETER_VALUE => Self::BadParameter,
            sqlstate::CONNECTION_FAILURE | sqlstate::CONNECTION_EXCEPTION => {
                Self::RegionUnavailable
            }
            sqlstate::ADMIN_SHUTDOWN | sqlstate::CANNOT_CONNECT_NOW => Self::ShuttingDown,
            _ => Self::Other,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why the proxy refused a statement (routing and residency refusals, and
/// the other errors the proxy answers instead of a region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No source names the statement's tenant.
    NoTenant,
    /// Two sources (comment, session, statement) name different tenants.
    TenantConflict,
    /// The statement, batch or transaction would span two regions.
    CrossRegion,
    /// The tenant is in no directory.
    UnknownTenant,
    /// The tenant lives in a region this proxy does not serve.
    RegionNotServed,
    /// An UPDATE would move rows to another tenant.
    TenantMove,
    /// A `$n` tenant parameter is NULL, missing or unreadable.
    BadTenantParameter,
    /// Bind of a statement not prepared through Parse (SQL PREPARE).
    UnpreparedStatement,
    /// Statement analysis found it unsafe or could not understand it.
    NotUnderstood,
    /// The region's servers are down (08006).
    RegionDown,
    /// The tenant directory's control database is unreachable (08000).
    DirectoryUnavailable,
    /// A feature RegionGuard does not offer (0A000).
    Unsupported,
    /// The transaction already failed (25P02).
    TransactionAborted,
    Other,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 14] = [
        Self::NoTenant,
        Self::TenantConflict,
        Self::CrossRegion,
        Self::UnknownTenant,
        Self::RegionNotServed,
        Self::TenantMove,
        Self::BadTenantParameter,
        Self::UnpreparedStatement,
        Self::NotUnderstood,
        Self::RegionDown,
        Self::DirectoryUnavailable,
        Self::Unsupported,
        Self::TransactionAborted,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoTenant => "no_tenant",
            Self::TenantConflict => "tenant_conflict",
            Self::CrossRegion => "cross_region",
            Self::UnknownTenant => "unknown_tenant",
            Self::RegionNotServed => "region_not_served",
            Self::TenantMove => "tenant_move",
            Self::BadTenantParameter => "bad_tenant_parameter",
            Self::UnpreparedStatement => "unprepared_statement",
            Self::NotUnderstood => "not_understood",
            Self::RegionDown => "region_down",
            Self::DirectoryUnavailable => "directory_unavailable",
            Self::Unsupported => "unsupported",
            Self::TransactionAborted => "transaction_aborted",
            Self::Other => "other",
        }
    }

    /// The reason of a refusal the proxy sent. Residency refusals share
    /// SQLSTATE 42501, so their messages (fixed texts in
    /// `frontend::route` and friends, which never contain values) tell them
    /// apart; a message this does not know counts as `other`, never as a
    /// new label. Runs only on refusals, not per statement.
    pub fn of(err: &PgError) -> RefusalReason {
        match err.code {
            sqlstate::CONNECTION_FAILURE => return Self::RegionDown,
            sqlstate::CONNECTION_EXCEPTION
            | sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION => {
                return Self::DirectoryUnavailable
            }
            sqlstate::FEATURE_NOT_SUPPORTED => return Self::Unsupported,
            "25P02" => return Self::TransactionAborted,
            "42501" => {}
            _ => return Self::Other,
        }
        let m = err.message.as_str();
        let has = |s: &str| m.contains(s);
        if has("two regions") || has("runs in region") {
            Self::CrossRegion
        } else if has("not in the tenant directory") {
            Self::UnknownTenant
        } else if has("does not serve") {
            Self::RegionNotServed
        } else if has("move rows to another tenant") {
            Self::TenantMove
        } else if has("differs from") || has("different tenants") {
            Self::TenantConflict
        } else if has("cannot tell which tenant")
            || has("no tenant found")
            || has("cannot bind")
            || has("cannot come from a parameter")
        {
            Self::NoTenant
        } else if has("tenant parameter") {
            Self::BadTenantParameter
        } else if has("not prepared through the extended protocol") {
            Self::UnpreparedStatement
        } else if m.starts_with("refused statement") {
            Self::NotUnderstood
        } else {
            Self::Other
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The SQLSTATE class (first two characters) of an error code, when it
/// looks like one: at most 36² values whatever a server sends.
pub fn sqlstate_class(code: &[u8]) -> Option<[u8; 2]> {
    match code {
        [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_map_to_kinds() {
        use StatementKind::*;
        for (tag, kind) in [
            (&b"SELECT 3\0"[..], Read),
            (b"INSERT 0 1", Write),
            (b"UPDATE 2", Write),
            (b"CREATE TABLE", Ddl),
            (b"BEGIN", Other),
            (b"SET", Other),
            (b"", Other),
        ] {
            assert_eq!(StatementKind::from_command_tag(tag, false), kind, "{tag:?}");
        }
        assert_eq!(StatementKind::from_command_tag(b"COPY 5", true), Write);
        assert_eq!(StatementKind::from_command_tag(b"COPY 5", false), Read);
    }

    #[test]
    fn error_codes_and_classes_are_read_from_the_body() {
        use crate::protocol::error::error_code;
        let body = b"SERROR\0VERROR\0C23505\0Mduplicate key\0\0";
        assert_eq!(error_code(body), Some(&b"23505"[..]));
        assert_eq!(sqlstate_class(b"23505"), Some(*b"23"));
        assert_eq!(sqlstate_class(b"2"), None);
        assert_eq!(sqlstate_class(b"\xff\xfe"), None);
        assert_eq!(error_code(b"SERROR\0"), None);
        assert_eq!(error_code(b"Cunterminated"), None);
    }

    #[test]
    fn refusal_messages_of_the_router_have_their_reasons() {
        use RefusalReason::*;
        // The messages as src/frontend/route.rs, requests/ and
        // tenant_value.rs word them today.
        for (message, reason) in [
            ("the statement's regionguard.tenant comment and the session's regionguard.tenant name different tenants", TenantConflict),
            ("refused statement on table customers: MERGE is not supported on tenant-scoped tables", NotUnderstood),
            ("refused statement: cannot parse", NotUnderstood),
            ("cannot tell which tenant a statement on tenant-scoped table customers belongs to", NoTenant),
            ("the tenant in the statement (table customers) differs from the session's or comment's regionguard.tenant", TenantConflict),
            ("an UPDATE may not move rows to another tenant", TenantMove),
            ("the tenant comes from parameter $1, which a simple query cannot bind", NoTenant),
            ("the statement touches tenants in two regions (eu and us)", CrossRegion),
            ("no tenant found for the statement", NoTenant),
            ("the tenant is not in the tenant directory", UnknownTenant),
            ("the tenant lives in region mars, which this RegionGuard does not serve", RegionNotServed),
            ("the query needs two regions (eu and us)", CrossRegion),
            ("one pipeline batch needs two regions (eu and us)", CrossRegion),
            ("the transaction runs in region eu; this statement belongs in region us", CrossRegion),
            ("the session runs in region eu; that tenant lives elsewhere", CrossRegion),
            ("regionguard.tenant cannot come from a parameter in a simple query", NoTenant),
            ("the tenant parameter $1 is NULL", BadTenantParameter),
            ("cannot read the binary tenant parameter $2: its type is unknown", BadTenantParameter),
            ("prepared statement \"s1\" was not prepared through the extended protocol, so RegionGuard cannot place it", UnpreparedStatement),
        ] {
            let err = PgError::error("42501", message);
            assert_eq!(RefusalReason::of(&err), reason, "{message}");
        }
        let down = PgError::error(sqlstate::CONNECTION_FAILURE, "region us is unavailable");
        assert_eq!(RefusalReason::of(&down), RefusalReason::RegionDown);
        let odd = PgError::error("42501", "something new");
        assert_eq!(RefusalReason::of(&odd), RefusalReason::Other);
    }
}
