//! How a schema change must be applied, told from its leading keywords.
//!
//! DDL goes to every region (issue 3 item 7). Most of it runs inside a
//! transaction, so the proxy wraps it in two-phase commit; a few forms
//! cannot (`CREATE INDEX CONCURRENTLY`, `CREATE DATABASE`, …) and are
//! applied region by region; temporary objects belong to the session's own
//! backend and stay in its region. sqlparser does not read several of
//! these forms (`DROP INDEX CONCURRENTLY`, `ALTER SYSTEM`, `CREATE UNLOGGED
//! TABLE`, `DO`), so the leading tokens decide, for parsed and unparsed
//! statements alike.

use super::lexer;

/// How one statement changes the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlForm {
    /// Not a schema change by its leading keywords.
    NotDdl,
    /// A schema change that runs inside a transaction block: every region,
    /// all or none.
    Transactional,
    /// Cannot run inside a transaction block (named for messages): every
    /// region, one by one, without atomicity.
    NonTransactional(&'static str),
    /// Creates a temporary object: it lives in the session's backend only.
    SessionLocal,
}

/// The form of every statement of `sql`, in the order [`super::analyze`]
/// lists them. Empty when the text cannot be tokenized.
pub fn ddl_forms(sql: &str) -> Vec<DdlForm> {
    match lexer::lex(sql) {
        Ok(lexed) => lexed.segments.iter().map(|s| form_of(&s.head)).collect(),
        Err(_) => Vec::new(),
    }
}

fn form_of(head: &[String]) -> DdlForm {
    let word = |i: usize| head.get(i).map(String::as_str).unwrap_or("");
    let temp = |w: &str| matches!(w, "TEMP" | "TEMPORARY");
    match word(0) {
        "CREATE" => {
            // CREATE [OR REPLACE] [LOCAL|GLOBAL] TEMP[ORARY] …
            let mut i = 1;
            if word(1) == "OR" && word(2) == "REPLACE" {
                i = 3;
            }
            if matches!(word(i), "LOCAL" | "GLOBAL") {
                i += 1;
            }
            if temp(word(i)) {
                return DdlForm::SessionLocal;
            }
            match (word(1), word(2), word(3)) {
                ("INDEX", "CONCURRENTLY", _) | ("UNIQUE", "INDEX", "CONCURRENTLY") => {
                    DdlForm::NonTransactional("CREATE INDEX CONCURRENTLY")
                }
                ("DATABASE", _, _) => DdlForm::NonTransactional("CREATE DATABASE"),
                ("TABLESPACE", _, _) => DdlForm::NonTransactional("CREATE TABLESPACE"),
                _ => DdlForm::Transactional,
            }
        }
        "DROP" => match (word(1), word(2)) {
            ("INDEX", "CONCURRENTLY") => DdlForm::NonTransactional("DROP INDEX CONCURRENTLY"),
            ("DATABASE", _) => DdlForm::NonTransactional("DROP DATABASE"),
            ("TABLESPACE", _) => DdlForm::NonTransactional("DROP TABLESPACE"),
            _ => DdlForm::Transactional,
        },
        "ALTER" => match word(1) {
            "SYSTEM" => DdlForm::NonTransactional("ALTER SYSTEM"),
            _ => DdlForm::Transactional,
        },
        "COMMENT" | "GRANT" | "REVOKE" | "DO" => DdlForm::Transactional,
        "SECURITY" if word(1) == "LABEL" => DdlForm::Transactional,
        _ => DdlForm::NotDdl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> DdlForm {
        let forms = ddl_forms(sql);
        assert_eq!(forms.len(), 1, "{sql}");
        forms[0]
    }

    #[test]
    fn tells_transactional_ddl_from_the_rest() {
        for sql in [
            "CREATE TABLE t (id int)",
            "create unlogged table u (id int)",
            "ALTER TABLE t ADD COLUMN x int",
            "ALTER SEQUENCE s RESTART",
            "DROP TABLE IF EXISTS t",
            "CREATE INDEX i ON t (id)",
            "COMMENT ON TABLE t IS 'x'",
            "GRANT SELECT ON t TO public",
            "DO $$ BEGIN CREATE TYPE s AS ENUM ('a'); EXCEPTION WHEN duplicate_object THEN null; END $$",
            "SECURITY LABEL ON TABLE t IS 'x'",
        ] {
            assert_eq!(one(sql), DdlForm::Transactional, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "VACUUM t",
            "REINDEX TABLE t",
        ] {
            assert_eq!(one(sql), DdlForm::NotDdl, "{sql}");
        }
    }

    #[test]
    fn finds_forms_that_cannot_run_in_a_transaction() {
        for (sql, name) in [
            (
                "CREATE INDEX CONCURRENTLY i ON t (id)",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "create unique index concurrently if not exists i on t (id)",
                "CREATE INDEX CONCURRENTLY",
            ),
            ("DROP INDEX CONCURRENTLY i", "DROP INDEX CONCURRENTLY"),
            ("CREATE DATABASE d", "CREATE DATABASE"),
            ("DROP DATABASE d", "DROP DATABASE"),
            ("ALTER SYSTEM SET work_mem = '8MB'", "ALTER SYSTEM"),
        ] {
            assert_eq!(one(sql), DdlForm::NonTransactional(name), "{sql}");
        }
    }

    #[test]
    fn temporary_objects_stay_in_the_session() {
        for sql in [
            "CREATE TEMP TABLE t (id int)",
            "CREATE TEMPORARY TABLE t AS SELECT 1",
            "CREATE LOCAL TEMP TABLE t (id int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE TEMPORARY SEQUENCE s",
        ] {
            assert_eq!(one(sql), DdlForm::SessionLocal, "{sql}");
        }
    }

    #[test]
    fn one_form_per_statement() {
        assert_eq!(
            ddl_forms("CREATE TABLE a (); SELECT 1; CREATE INDEX CONCURRENTLY i ON a (x)"),
            vec![
                DdlForm::Transactional,
                DdlForm::NotDdl,
                DdlForm::NonTransactional("CREATE INDEX CONCURRENTLY")
            ]
        );
    }
}
