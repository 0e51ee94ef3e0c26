//! The logical type names accepted in `[classified]` and their catalog facts.

/// A logical (application-visible) type of a classified column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogicalType {
    Text,
    Varchar,
    /// `char(n)` / `bpchar`.
    Bpchar,
    Bytea,
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Uuid,
    Json,
    Jsonb,
    /// A one-dimensional array of a scalar type above.
    Array(Box<LogicalType>),
}

impl LogicalType {
    /// Parses a type name as written in the config (`text`, `int4`,
    /// `integer`, `timestamp with time zone`, `uuid[]`, …).
    pub fn parse(name: &str) -> Result<LogicalType, String> {
        let lower = name.trim().to_ascii_lowercase();
        if let Some(element) = lower.strip_suffix("[]") {
            let element = LogicalType::parse(element)?;
            if matches!(element, LogicalType::Array(_)) {
                return Err(format!("`{name}`: arrays of arrays are not supported"));
            }
            return Ok(LogicalType::Array(Box::new(element)));
        }
        let t = match lower.as_str() {
            "text" => LogicalType::Text,
            "varchar" | "character varying" => LogicalType::Varchar,
            "char" | "character" | "bpchar" => LogicalType::Bpchar,
            "bytea" => LogicalType::Bytea,
            "bool" | "boolean" => LogicalType::Bool,
            "int2" | "smallint" => LogicalType::Int2,
            "int4" | "int" | "integer" => LogicalType::Int4,
            "int8" | "bigint" => LogicalType::Int8,
            "float4" | "real" => LogicalType::Float4,
            "float8" | "double precision" => LogicalType::Float8,
            "numeric" | "decimal" => LogicalType::Numeric,
            "date" => LogicalType::Date,
            "time" | "time without time zone" => LogicalType::Time,
            "timestamp" | "timestamp without time zone" => LogicalType::Timestamp,
            "timestamptz" | "timestamp with time zone" => LogicalType::Timestamptz,
            "uuid" => LogicalType::Uuid,
            "json" => LogicalType::Json,
            "jsonb" => LogicalType::Jsonb,
            _ => {
                return Err(format!(
                    "`{name}` is not a supported logical type (text, varchar, char, bytea, bool, int2, int4, int8, float4, float8, numeric, date, time, timestamp, timestamptz, uuid, json, jsonb, or an array of one: `text[]`)"
                ))
            }
        };
        Ok(t)
    }

    /// The type's OID in `pg_type` (the same in every Postgres database).
    pub fn oid(&self) -> u32 {
        match self {
            LogicalType::Text => 25,
            LogicalType::Varchar => 1043,
            LogicalType::Bpchar => 1042,
            LogicalType::Bytea => 17,
            LogicalType::Bool => 16,
            LogicalType::Int2 => 21,
            LogicalType::Int4 => 23,
            LogicalType::Int8 => 20,
            LogicalType::Float4 => 700,
            LogicalType::Float8 => 701,
            LogicalType::Numeric => 1700,
            LogicalType::Date => 1082,
            LogicalType::Time => 1083,
            LogicalType::Timestamp => 1114,
            LogicalType::Timestamptz => 1184,
            LogicalType::Uuid => 2950,
            LogicalType::Json => 114,
            LogicalType::Jsonb => 3802,
            LogicalType::Array(element) => element.array_oid(),
        }
    }

    /// The OID of the array type whose elements are this type.
    fn array_oid(&self) -> u32 {
        match self {
            LogicalType::Text => 1009,
            LogicalType::Varchar => 1015,
            LogicalType::Bpchar => 1014,
            LogicalType::Bytea => 1001,
            LogicalType::Bool => 1000,
            LogicalType::Int2 => 1005,
            LogicalType::Int4 => 1007,
            LogicalType::Int8 => 1016,
            LogicalType::Float4 => 1021,
            LogicalType::Float8 => 1022,
            LogicalType::Numeric => 1231,
            LogicalType::Date => 1182,
            LogicalType::Time => 1183,
            LogicalType::Timestamp => 1115,
            LogicalType::Timestamptz => 1185,
            LogicalType::Uuid => 2951,
            LogicalType::Json => 199,
            LogicalType::Jsonb => 3807,
            LogicalType::Array(_) => 0,
        }
    }

    /// `pg_type.typlen`: the fixed size in bytes, or -1 for variable length,
    /// as RowDescription reports it.
    pub fn typlen(&self) -> i16 {
        match self {
            LogicalType::Bool => 1,
            LogicalType::Int2 => 2,
            LogicalType::Int4 | LogicalType::Float4 | LogicalType::Date => 4,
            LogicalType::Int8
            | LogicalType::Float8
            | LogicalType::Time
            | LogicalType::Timestamp
            | LogicalType::Timestamptz => 8,
            LogicalType::Uuid => 16,
            _ => -1,
        }
    }

    /// The name Postgres uses (`format_type`), for messages.
    pub fn name(&self) -> String {
        match self {
            LogicalType::Array(element) => format!("{}[]", element.name()),
            LogicalType::Text => "text".into(),
            LogicalType::Varchar => "character varying".into(),
            LogicalType::Bpchar => "character".into(),
            LogicalType::Bytea => "bytea".into(),
            LogicalType::Bool => "boolean".into(),
            LogicalType::Int2 => "smallint".into(),
            LogicalType::Int4 => "integer".into(),
            LogicalType::Int8 => "bigint".into(),
            LogicalType::Float4 => "real".into(),
            LogicalType::Float8 => "double precision".into(),
            LogicalType::Numeric => "numeric".into(),
            LogicalType::Date => "date".into(),
            LogicalType::Time => "time without time zone".into(),
            LogicalType::Timestamp => "timestamp without time zone".into(),
            LogicalType::Timestamptz => "timestamp with time zone".into(),
            LogicalType::Uuid => "uuid".into(),
            LogicalType::Json => "json".into(),
            LogicalType::Jsonb => "jsonb".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogicalType;

    #[test]
    fn names_and_arrays_parse() {
        assert_eq!(LogicalType::parse("Integer"), Ok(LogicalType::Int4));
        assert_eq!(
            LogicalType::parse("timestamp with time zone"),
            Ok(LogicalType::Timestamptz)
        );
        let arr = LogicalType::parse("uuid[]").unwrap();
        assert_eq!(arr.oid(), 2951);
        assert_eq!(arr.name(), "uuid[]");
        assert!(LogicalType::parse("int4[][]").is_err());
        assert!(LogicalType::parse("money").unwrap_err().contains("money"));
    }
}
