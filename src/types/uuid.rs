//! `uuid`. The text input is Postgres's `string_to_uuid` grammar, which is
//! looser than RFC 9562 (a hyphen may follow any group of four digits,
//! braces are optional) and stricter elsewhere (no whitespace, no `urn:`),
//! so it is parsed here rather than with the `uuid` crate's parser; output
//! uses the crate.

use super::error::TypeError;

pub(crate) fn uuid_in(text: &str) -> Result<Vec<u8>, TypeError> {
    let err = || TypeError::syntax("uuid");
    let mut s = text.as_bytes();
    let braces = s.first() == Some(&b'{');
    if braces {
        s = &s[1..];
    }
    let mut out = Vec::with_capacity(16);
    for i in 0..16 {
        let (Some(&a), Some(&b)) = (s.first(), s.get(1)) else {
            return Err(err());
        };
        let high = (a as char).to_digit(16).ok_or_else(err)?;
        let low = (b as char).to_digit(16).ok_or_else(err)?;
        // Both are < 16, so the byte is exact.
        out.push((high * 16 + low) as u8);
        s = &s[2..];
        if s.first() == Some(&b'-') && i % 2 == 1 && i < 15 {
            s = &s[1..];
        }
    }
    if braces {
        s = s.strip_prefix(b"}").ok_or_else(err)?;
    }
    if !s.is_empty() {
        return Err(err());
    }
    Ok(out)
}

pub(crate) fn uuid_recv(bin: &[u8]) -> Result<Vec<u8>, TypeError> {
    if bin.len() != 16 {
        return Err(TypeError::binary("uuid", "expected 16 bytes"));
    }
    Ok(bin.to_vec())
}

pub(crate) fn uuid_out(bin: &[u8]) -> Result<String, TypeError> {
    let bytes: [u8; 16] = bin
        .try_into()
        .map_err(|_| TypeError::binary("uuid", "expected 16 bytes"))?;
    Ok(uuid::Uuid::from_bytes(bytes).hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let canonical = uuid_in("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(uuid_in(form).unwrap(), canonical, "{form}");
        }
        for bad in [
            "",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc999-c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(uuid_in(bad).is_err(), "{bad}");
        }
        assert_eq!(
            uuid_out(&canonical).unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }
}
