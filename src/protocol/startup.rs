//! The client's first packets: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage, plus the `options` startup parameter.

use bytes::BytesMut;
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Postgres's own cap on a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// What the client opened with.
#[derive(Debug, PartialEq, Eq)]
pub enum InitialPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: Vec<u8> },
    Startup(StartupRequest),
}

/// A decoded StartupMessage.
#[derive(Debug, PartialEq, Eq)]
pub struct StartupRequest {
    pub major: u16,
    pub minor: u16,
    /// In the order the client sent them.
    pub params: Vec<(String, String)>,
}

impl StartupRequest {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A first packet that cannot be served; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0")]
    UnsupportedProtocol(u16, u16),
    #[error("invalid startup packet layout")]
    Malformed,
    #[error("startup packet is not valid UTF-8")]
    NotUtf8,
    #[error("connection closed during startup: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one length-prefixed initial packet.
pub async fn read_initial<R: AsyncRead + Unpin>(r: &mut R) -> Result<InitialPacket, StartupError> {
    let len = r.read_i32().await?;
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let mut packet = vec![0u8; len as usize];
    packet[..4].copy_from_slice(&len.to_be_bytes());
    r.read_exact(&mut packet[4..]).await?;
    parse_initial(&packet)
}

/// Parses a complete initial packet (length prefix included).
pub fn parse_initial(packet: &[u8]) -> Result<InitialPacket, StartupError> {
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST if packet.len() == 8 => Ok(InitialPacket::SslRequest),
        GSSENC_REQUEST if packet.len() == 8 => Ok(InitialPacket::GssEncRequest),
        CANCEL_REQUEST if (16..=8 + 256).contains(&packet.len()) => {
            let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            Ok(InitialPacket::Cancel {
                pid,
                secret: packet[12..].to_vec(),
            })
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::Malformed),
        _ => parse_startup(packet).map(InitialPacket::Startup),
    }
}

fn parse_startup(packet: &[u8]) -> Result<StartupRequest, StartupError> {
    let major = u16::from_be_bytes([packet[4], packet[5]]);
    let minor = u16::from_be_bytes([packet[6], packet[7]]);
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol(major, minor));
    }
    // pgwire decodes strings lossily; refuse non-UTF-8 rather than corrupt.
    if std::str::from_utf8(&packet[8..]).is_err() {
        return Err(StartupError::NotUtf8);
    }
    if packet.last() != Some(&0) {
        return Err(StartupError::Malformed);
    }
    let mut buf = BytesMut::from(packet);
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let startup = Startup::decode(&mut buf, &ctx)
        .map_err(|_| StartupError::Malformed)?
        .ok_or(StartupError::Malformed)?;
    // Keep the client's order: pgwire's map sorts, so re-walk the packet.
    let mut params = Vec::with_capacity(startup.parameters.len());
    let mut pos = 8;
    while let Some(key) = super::framing::read_cstr(packet, &mut pos) {
        if key.is_empty() {
            break;
        }
        let key = String::from_utf8_lossy(key).into_owned();
        if let Some(v) = startup.parameters.get(&key) {
            params.push((key, v.clone()));
        }
        super::framing::read_cstr(packet, &mut pos).ok_or(StartupError::Malformed)?;
    }
    Ok(StartupRequest {
        major,
        minor,
        params,
    })
}

/// Splits the `options` startup parameter into command-line words, with
/// Postgres's backslash escaping.
pub fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
                in_word = true;
            }
        } else if c.is_ascii_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
        } else {
            cur.push(c);
            in_word = true;
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Joins words back into an `options` value, escaping as Postgres expects.
pub fn join_options(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let mut out = String::with_capacity(w.len());
            for c in w.chars() {
                if c == '\\' || c.is_ascii_whitespace() {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `options` parameter split into settings addressed to the proxy
/// (`-c regionguard.*=…`) and the words to pass on to Postgres.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub proxy_settings: Vec<(String, String)>,
    pub passthrough: Vec<String>,
}

/// Separates `-c regionguard.x=y` / `--regionguard.x=y` from other options.
pub fn parse_options(options: &str) -> Options {
    let words = split_options(options);
    let mut out = Options::default();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let (setting, used) = if w == "-c" {
            (words.get(i + 1).map(String::as_str), 2)
        } else if let Some(s) = w.strip_prefix("-c") {
            (Some(s), 1)
        } else if let Some(s) = w.strip_prefix("--") {
            (Some(s), 1)
        } else {
            (None, 1)
        };
        match setting.and_then(|s| s.split_once('=')) {
            Some((k, v)) if k.to_ascii_lowercase().starts_with("regionguard.") => {
                out.proxy_settings
                    .push((k.to_ascii_lowercase(), v.to_string()));
            }
            _ => out
                .passthrough
                .extend(words[i..(i + used).min(words.len())].iter().cloned()),
        }
        i += used;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = vec![0, 3, 0, 0];
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    #[test]
    fn parses_startup_in_client_order() {
        let p = startup_packet(&[
            ("user", "app"),
            ("database", "db"),
            ("application_name", "x"),
        ]);
        match parse_initial(&p).unwrap() {
            InitialPacket::Startup(s) => {
                assert_eq!(s.get("user"), Some("app"));
                assert_eq!(s.params[2].0, "application_name");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn recognises_special_requests() {
        let ssl = [0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(parse_initial(&ssl).unwrap(), InitialPacket::SslRequest);
        let mut cancel = vec![0, 0, 0, 16, 4, 210, 22, 46];
        cancel.extend(7i32.to_be_bytes());
        cancel.extend(9i32.to_be_bytes());
        assert_eq!(
            parse_initial(&cancel).unwrap(),
            InitialPacket::Cancel {
                pid: 7,
                secret: 9i32.to_be_bytes().to_vec()
            }
        );
    }

    #[test]
    fn refuses_bad_packets() {
        let mut p = startup_packet(&[("user", "app")]);
        p[5] = 2; // protocol 2.0
        assert!(parse_initial(&p).is_err());
        let mut p = startup_packet(&[("user", "\u{e9}")]);
        let n = p.len();
        p[n - 3] = 0xff;
        assert!(parse_initial(&p).is_err());
        let mut p = startup_packet(&[("user", "app")]);
        let n = p.len();
        p[n - 1] = b'x';
        assert!(parse_initial(&p).is_err());
    }

    #[test]
    fn options_split_proxy_settings_from_postgres_ones() {
        let o = parse_options(
            r"-c regionguard.region=us -c search_path=a\ b --regionguard.tenant=acme -cwork_mem=1MB",
        );
        assert_eq!(
            o.proxy_settings,
            vec![
                ("regionguard.region".to_string(), "us".to_string()),
                ("regionguard.tenant".to_string(), "acme".to_string())
            ]
        );
        assert_eq!(
            o.passthrough,
            vec!["-c", "search_path=a b", "-cwork_mem=1MB"]
        );
        assert_eq!(
            join_options(&o.passthrough),
            r"-c search_path=a\ b -cwork_mem=1MB"
        );
    }
}
