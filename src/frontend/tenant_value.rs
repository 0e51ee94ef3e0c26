//! Reading a tenant id out of a Bind parameter, in text or binary format.

use crate::protocol::error::PgError;
use crate::protocol::frontend_msg::Bind;

/// Type OIDs a tenant id may have.
pub mod oid {
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const VARCHAR: u32 = 1043;
    pub const BPCHAR: u32 = 1042;
    pub const NAME: u32 = 19;
    pub const UUID: u32 = 2950;
    pub const UNKNOWN: u32 = 705;
}

/// The tenant id in parameter `n` (1-based). `param_type` is the type the
/// statement was prepared with or the server inferred (0 when unknown).
pub fn from_param(bind: &Bind<'_>, n: usize, param_type: u32) -> Result<String, PgError> {
    let idx = n.checked_sub(1).ok_or_else(|| missing(n))?;
    let value = bind.params.get(idx).ok_or_else(|| missing(n))?;
    let Some(bytes) = value else {
        return Err(super::route::refusal(
            format!("the tenant parameter ${n} is NULL"),
            "bind a tenant id, not NULL",
        ));
    };
    if !bind.is_binary(idx) {
        return std::str::from_utf8(bytes)
            .map(|s| s.trim_end().to_string())
            .map_err(|_| undecodable(n));
    }
    if param_type == 0 {
        return Err(super::route::refusal(
            format!("cannot read the binary tenant parameter ${n}: its type is unknown"),
            "send the tenant parameter in text format, or give its type when preparing the statement",
        ));
    }
    from_binary(bytes, param_type).ok_or_else(|| undecodable(n))
}

/// A tenant id from its binary representation as type `type_oid` (a Bind
/// parameter, a field of binary COPY data): `None` when a tenant id cannot
/// have that type or the bytes are not a value of it.
pub fn from_binary(bytes: &[u8], type_oid: u32) -> Option<String> {
    match type_oid {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN => {
            std::str::from_utf8(bytes)
                .ok()
                .map(|s| s.trim_end().to_string())
        }
        oid::INT2 => Some(i16::from_be_bytes(bytes.try_into().ok()?).to_string()),
        oid::INT4 => Some(i32::from_be_bytes(bytes.try_into().ok()?).to_string()),
        oid::INT8 => Some(i64::from_be_bytes(bytes.try_into().ok()?).to_string()),
        oid::UUID if bytes.len() == 16 => Some(format_uuid(bytes)),
        _ => None,
    }
}

fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn missing(n: usize) -> PgError {
    super::route::refusal(
        format!("the statement's tenant parameter ${n} was not bound"),
        "bind every parameter the statement uses",
    )
}

fn undecodable(n: usize) -> PgError {
    super::route::refusal(
        format!("cannot read the tenant parameter ${n}"),
        "tenant ids must be text, varchar, int2/4/8 or uuid",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind<'a>(formats: Vec<i16>, params: Vec<Option<&'a [u8]>>) -> Bind<'a> {
        Bind {
            portal: "",
            statement: "",
            param_formats: formats,
            params,
        }
    }

    #[test]
    fn text_and_binary_ids() {
        assert_eq!(
            from_param(&bind(vec![], vec![Some(b"acme")]), 1, 0).unwrap(),
            "acme"
        );
        let b = 42i32.to_be_bytes();
        assert_eq!(
            from_param(&bind(vec![1], vec![Some(&b)]), 1, oid::INT4).unwrap(),
            "42"
        );
        let b = 7i64.to_be_bytes();
        assert_eq!(
            from_param(&bind(vec![1], vec![Some(&b)]), 1, oid::INT8).unwrap(),
            "7"
        );
        let u = [
            0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(
            from_param(&bind(vec![1], vec![Some(&u)]), 1, oid::UUID).unwrap(),
            "12345678-9abc-def0-0102-030405060708"
        );
        assert_eq!(
            from_param(&bind(vec![1], vec![Some(b"acme")]), 1, oid::TEXT).unwrap(),
            "acme"
        );
    }

    #[test]
    fn refusals() {
        assert!(from_param(&bind(vec![], vec![None]), 1, 0).is_err());
        assert!(from_param(&bind(vec![], vec![]), 1, 0).is_err());
        assert!(from_param(&bind(vec![1], vec![Some(b"acme")]), 1, 0).is_err());
        assert!(from_param(&bind(vec![1], vec![Some(b"abc")]), 1, oid::INT4).is_err());
        assert!(from_param(&bind(vec![], vec![Some(b"x")]), 0, 0).is_err());
    }

    #[test]
    fn binary_tenant_ids_are_read_strictly_by_type() {
        assert_eq!(from_binary(b"acme", oid::TEXT).as_deref(), Some("acme"));
        assert_eq!(
            from_binary(&42i32.to_be_bytes(), oid::INT4).as_deref(),
            Some("42")
        );
        assert_eq!(
            from_binary(&7i64.to_be_bytes(), oid::INT8).as_deref(),
            Some("7")
        );
        assert_eq!(from_binary(&7i32.to_be_bytes(), oid::INT8), None);
        assert_eq!(
            from_binary(
                &[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8],
                oid::UUID
            )
            .as_deref(),
            Some("12345678-9abc-def0-0102-030405060708")
        );
        assert_eq!(from_binary(b"x", 0), None);
    }
}
