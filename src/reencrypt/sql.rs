//! The SQL a re-encryption job runs against one classified column: which
//! rows are under an older data key version than their tenant's active one,
//! and the compare-and-set that rewrites them.
//!
//! The envelope header (ADR 5: format byte 1, mode 1|2, key version u32 BE)
//! is read by the database itself, so only rows that need work cross the
//! wire: for `bytea` storage the version is bytes 3..6 of the value; for
//! text storage (`rg1:` + base64) the first 8 base64 characters decode to
//! exactly the 6 header bytes. The version stays a 4-byte big-endian
//! `bytea`, compared with `int4send(active)`: bytewise order of equal-length
//! big-endian numbers is numeric order, and no cast can fail on odd data.
//! Values that are not envelopes (NULL, plaintext left from before the
//! column was classified, garbage) give NULL and are never selected.

use crate::catalog::Storage;

/// Pages scanned per query: bounds each query's work on a large table while
/// the cursor (a `ctid`) walks it once per pass. A batch query reads (and
/// sorts by ctid) what is left of its window, so the window stays a few
/// batches' worth of rows: 64 pages = 512 KiB, some thousands of rows.
pub const WINDOW_PAGES: u32 = 64;

/// A tenant id as the key table and the associated data spell it, computed
/// from a tenant column's text form (the directory's normalisation: trimmed,
/// UUIDs lower-cased).
pub fn canonical_tenant_sql(tenant_text: &str) -> String {
    format!(
        "(CASE WHEN btrim({t}) ~ '^[0-9A-Fa-f-]{{36}}$' THEN lower(btrim({t})) ELSE btrim({t}) END)",
        t = tenant_text
    )
}

/// One classified column of one table, as SQL fragments. Identifiers come
/// from the database (`regclass` text, `quote_ident`), never from a client.
#[derive(Debug, Clone)]
pub struct ColumnSql {
    /// Schema-qualified and quoted as `regclass::text` prints it.
    pub table: String,
    /// The classified column, quoted.
    pub column: String,
    /// The tenant column, quoted.
    pub tenant: String,
    pub storage: Storage,
}

impl ColumnSql {
    /// The envelope's key version of `t.<column>` as 4 big-endian bytes, or
    /// NULL when the value is not an envelope.
    pub fn version_expr(&self) -> String {
        let c = format!("t.{}", self.column);
        match self.storage {
            Storage::Bytea => format!(
                "(CASE WHEN substring({c} FROM 1 FOR 2) IN ('\\x0101'::bytea, '\\x0102'::bytea) \
                 THEN substring({c} FROM 3 FOR 4) END)"
            ),
            Storage::Text => {
                let header = format!("decode(substring({c} FROM 5 FOR 8), 'base64')");
                format!(
                    "(CASE WHEN {c} ~ '^rg1:AQ[E-L][A-Za-z0-9+/]{{5}}' \
                     THEN substring({header} FROM 3 FOR 4) END)"
                )
            }
        }
    }

    /// The row's canonical tenant.
    pub fn tenant_expr(&self) -> String {
        canonical_tenant_sql(&format!("t.{}::text", self.tenant))
    }

    /// The SQL type of the column's stored values.
    fn storage_type(&self) -> &'static str {
        match self.storage {
            Storage::Bytea => "bytea",
            Storage::Text => "text",
        }
    }

    /// Rows after `$3` (a tid, exclusive) and before `$4` (exclusive) whose
    /// value is under a version older than its tenant's active one, in
    /// physical order, at most `$5`. `$1`/`$2`: tenants and their active
    /// versions (parallel arrays). Returns ctid, tenant, stored value.
    pub fn select_batch(&self) -> String {
        format!(
            "SELECT t.ctid::text, {tenant}, t.{col} \
             FROM {table} AS t \
             JOIN unnest($1::text[], $2::int4[]) AS a(tenant, active) ON a.tenant = {tenant} \
             WHERE t.ctid > $3::text::tid AND t.ctid < $4::text::tid \
               AND {version} < int4send(a.active) \
             ORDER BY t.ctid LIMIT $5",
            tenant = self.tenant_expr(),
            col = self.column,
            table = self.table,
            version = self.version_expr(),
        )
    }

    /// The compare-and-set: a row is rewritten only if it is still where it
    /// was read (same ctid: not updated since), still holds the old
    /// ciphertext and still belongs to the same tenant. A row the
    /// application changed in between is left alone (its new value is under
    /// the active version anyway, or the next pass finds it). `$1` ctids,
    /// `$2` old values, `$3` new values, `$4` tenants.
    pub fn update_batch(&self) -> String {
        let ty = self.storage_type();
        format!(
            "UPDATE {table} AS t SET {col} = v.new \
             FROM unnest($1::text[], $2::{ty}[], $3::{ty}[], $4::text[]) AS v(ctid, old, new, tenant) \
             WHERE t.ctid = v.ctid::tid AND t.{col} = v.old AND {tenant} = v.tenant",
            table = self.table,
            col = self.column,
            tenant = self.tenant_expr(),
        )
    }

    /// How many rows of the tenants `$1` (active versions `$2`) are still
    /// under an older version.
    pub fn count_old(&self) -> String {
        format!(
            "SELECT count(*) FROM {table} AS t \
             JOIN unnest($1::text[], $2::int4[]) AS a(tenant, active) ON a.tenant = {tenant} \
             WHERE {version} < int4send(a.active)",
            table = self.table,
            tenant = self.tenant_expr(),
            version = self.version_expr(),
        )
    }

    /// Every (tenant, key version) still used by a row of the tenants `$1`:
    /// what must not be retired.
    pub fn versions_in_use(&self) -> String {
        format!(
            "SELECT DISTINCT {tenant}, {version} FROM {table} AS t \
             WHERE {tenant} = ANY($1::text[]) AND {version} IS NOT NULL",
            table = self.table,
            tenant = self.tenant_expr(),
            version = self.version_expr(),
        )
    }

    /// The table's size in pages now: where a pass ends (rows appended later
    /// are written under the active version).
    pub fn pages(&self) -> String {
        format!(
            "SELECT (pg_relation_size('{}'::regclass) / current_setting('block_size')::int8)::int8",
            self.table.replace('\'', "''")
        )
    }
}

/// The text form of the tid at the start of `page` (offsets start at 1, so
/// `> (page,0)` includes the page's first tuple).
pub fn page_start(page: u64) -> String {
    format!("({page},0)")
}

/// A key version read back from [`ColumnSql::version_expr`].
pub fn version_of(bytes: &[u8]) -> Option<u32> {
    let b: [u8; 4] = bytes.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::{self, Header, Mode};

    fn col(storage: Storage) -> ColumnSql {
        ColumnSql {
            table: "public.customers".into(),
            column: "\"E-mail\"".into(),
            tenant: "tenant_id".into(),
            storage,
        }
    }

    #[test]
    fn text_form_header_is_the_first_eight_base64_characters() {
        // The regex in version_expr: format 1 and mode 1 or 2 always encode
        // as "AQ" and one of E-H (mode 1) or I-L (mode 2), then five more.
        for mode in [Mode::Randomized, Mode::Deterministic] {
            for version in [1u32, 2, 255, 256, 70_000, u32::MAX] {
                let header = Header {
                    mode,
                    key_version: version,
                };
                let env = envelope::encode(header, &[7; 12], &[0; 16]);
                let text = envelope::to_text(&env);
                let head = &text[4..12];
                assert!(head.starts_with("AQ"), "{head}");
                assert!((b'E'..=b'L').contains(&head.as_bytes()[2]), "{head}");
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(head)
                    .unwrap();
                assert_eq!(decoded, header.to_bytes());
                assert_eq!(version_of(&decoded[2..]), Some(version));
            }
        }
    }

    #[test]
    fn statements_name_the_column_and_quote_nothing_from_values() {
        let c = col(Storage::Bytea);
        let select = c.select_batch();
        assert!(select.contains("t.\"E-mail\""), "{select}");
        assert!(select.contains("int4send(a.active)"));
        assert!(select.contains("ORDER BY t.ctid LIMIT $5"));
        let update = c.update_batch();
        assert!(update.contains("$2::bytea[]"), "{update}");
        assert!(update.contains("t.\"E-mail\" = v.old"), "{update}");
        assert!(update.contains("t.ctid = v.ctid::tid"), "{update}");
        let text = col(Storage::Text);
        assert!(text.update_batch().contains("$3::text[]"));
        assert!(text.version_expr().contains("'base64'"));
        assert!(c.pages().contains("'public.customers'::regclass"));
    }

    #[test]
    fn versions_and_pages() {
        assert_eq!(version_of(&[0, 0, 1, 2]), Some(258));
        assert_eq!(version_of(&[0, 1]), None);
        assert_eq!(page_start(12), "(12,0)");
        assert!(canonical_tenant_sql("x").contains("lower(btrim(x))"));
    }
}
