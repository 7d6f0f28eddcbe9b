//! Event data as `application/x-www-form-urlencoded`, decoded strictly.
//!
//! Lenient decoders replace invalid UTF-8 with U+FFFD and pass NUL bytes on, which would
//! run something other than what the producer wrote, or fail later inside PostgreSQL
//! (text cannot hold NUL). Here both are errors naming the key, so a bad event becomes a
//! clear dead letter instead.

use percent_encoding::percent_decode;
use thiserror::Error;

/// Why event data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("malformed percent-encoding in {0:?}")]
    Percent(String),
    #[error("invalid UTF-8 in {0:?}")]
    Utf8(String),
    #[error("NUL byte in {0:?}")]
    Nul(String),
    #[error("empty key in event data")]
    EmptyKey,
}

/// Decodes `a=1&b=x+y&c` into ordered pairs (a key without `=` has an empty value).
pub fn decode(data: &str) -> Result<Vec<(String, String)>, DecodeError> {
    data.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let key = decode_component(k, k)?;
            if key.is_empty() {
                return Err(DecodeError::EmptyKey);
            }
            let value = decode_component(v, &key)?;
            Ok((key, value))
        })
        .collect()
}

fn decode_component(raw: &str, what: &str) -> Result<String, DecodeError> {
    let bytes = raw.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(DecodeError::Percent(what.to_string()));
    }
    let plus_as_space = raw.replace('+', " ");
    let text = percent_decode(plus_as_space.as_bytes())
        .decode_utf8()
        .map_err(|_| DecodeError::Utf8(what.to_string()))?;
    if text.contains('\0') {
        return Err(DecodeError::Nul(what.to_string()));
    }
    Ok(text.into_owned())
}

/// Encodes ordered pairs; the inverse of [`decode`].
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    ser.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn decodes_plus_percent_and_bare_keys() {
        assert_eq!(
            decode("sql=select+1%2B1&lane=a&flag&sql=x%26y").unwrap(),
            pairs(&[
                ("sql", "select 1+1"),
                ("lane", "a"),
                ("flag", ""),
                ("sql", "x&y")
            ])
        );
        assert_eq!(decode("").unwrap(), vec![]);
    }

    #[test]
    fn rejects_what_would_be_silently_changed() {
        assert_eq!(decode("a=%zz"), Err(DecodeError::Percent("a".into())));
        assert_eq!(decode("a=%4"), Err(DecodeError::Percent("a".into())));
        assert_eq!(decode("a=%ff%fe"), Err(DecodeError::Utf8("a".into())));
        assert_eq!(decode("a=x%00y"), Err(DecodeError::Nul("a".into())));
        assert_eq!(decode("=1"), Err(DecodeError::EmptyKey));
    }

    #[test]
    fn encode_round_trips() {
        let p = pairs(&[("sql", "select 'a&b=c' + 1 -- ü"), ("k", "")]);
        let text = encode(p.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(decode(&text).unwrap(), p);
    }
}
