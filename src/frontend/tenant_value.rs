//! Reading a tenant id out of a Bind parameter, in text or binary format.

use crate::protocol::error::PgError;
use crate::protocol::frontend_msg::Bind;

/// Type OIDs a tenant id may have.
mod oid {
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
    let int = |b: &[u8]| -> Option<i64> {
        Some(match b.len() {
            2 => i16::from_be_bytes(b.try_into().ok()?) as i64,
            4 => i32::from_be_bytes(b.try_into().ok()?) as i64,
            8 => i64::from_be_bytes(b.try_into().ok()?),
            _ => return None,
        })
    };
    match param_type {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN => std::str::from_utf8(bytes)
            .map(|s| s.trim_end().to_string())
            .map_err(|_| undecodable(n)),
        oid::INT2 | oid::INT4 | oid::INT8 => int(bytes).map(|v| v.to_string()).ok_or_else(|| undecodable(n)),
        oid::UUID if bytes.len() == 16 => Ok(format_uuid(bytes)),
        0 => Err(super::route::refusal(
            format!("cannot read the binary tenant parameter ${n}: its type is unknown"),
            "send the tenant parameter in text format, or give its type when preparing the statement",
        )),
        _ => Err(undecodable(n)),
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
}
