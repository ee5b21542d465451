//! mDNS TXT → records: [`ClientRecord::from_txt`] and
//! [`ServerRecord::from_txt`].
//!
//! Input: one selector byte (low bit: client or server record), then TXT
//! RDATA as on the wire: strings of one length byte and that many bytes,
//! each `key=value` or a bare `key` (RFC 6763 §6). Keys reach the parsers
//! as mdns-sd hands them over, as text; a key that is not UTF-8 is decoded
//! lossily.
//!
//! Asserts:
//! - parsing never panics;
//! - a parsed record announces again ([`to_txt`]) and that parses back to
//!   the same record, every property within 255 bytes; except a client
//!   record with an invalid group, whose `to_txt` must refuse the group;
//! - an error message names the TXT key concerned (starts with `TXT `).
//!
//! [`to_txt`]: ClientRecord::to_txt

#![no_main]

use cfi_announce::{ClientRecord, GroupField, MAX_PROPERTY_LEN, RecordError, ServerRecord};
use libfuzzer_sys::fuzz_target;

/// The TXT strings of `rdata`, split at their first `=`.
fn properties(mut rdata: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = rdata.split_first() {
        let len = usize::from(len).min(rest.len());
        let (string, rest) = rest.split_at(len);
        rdata = rest;
        let (key, value) = match string.iter().position(|&b| b == b'=') {
            Some(i) => (&string[..i], Some(string[i + 1..].to_vec())),
            None => (string, None),
        };
        out.push((String::from_utf8_lossy(key).into_owned(), value));
    }
    out
}

fn borrowed(props: &[(String, Option<Vec<u8>>)]) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    props.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
}

fn announced(txt: &[(String, String)]) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    for (k, v) in txt {
        assert!(
            k.len() + 1 + v.len() <= MAX_PROPERTY_LEN,
            "{k}={v} too long"
        );
    }
    txt.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
}

fn check_error(err: &RecordError) {
    let message = err.to_string();
    assert!(message.starts_with("TXT "), "{message}");
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rdata)) = input.split_first() else {
        return;
    };
    let props = properties(rdata);
    if selector & 1 == 0 {
        match ClientRecord::from_txt(borrowed(&props)) {
            Ok(record) => match record.to_txt() {
                Ok(txt) => {
                    assert!(
                        !matches!(record.group, GroupField::Invalid(_)),
                        "{record:?}"
                    );
                    let again = ClientRecord::from_txt(announced(&txt));
                    assert_eq!(again.as_ref(), Ok(&record), "{txt:?}");
                }
                Err(RecordError::Group { .. })
                    if matches!(record.group, GroupField::Invalid(_)) => {}
                Err(e) => panic!("parsed client record {record:?} does not announce: {e}"),
            },
            Err(e) => check_error(&e),
        }
    } else {
        match ServerRecord::from_txt(borrowed(&props)) {
            Ok(record) => {
                let txt = record
                    .to_txt()
                    .unwrap_or_else(|e| panic!("parsed {record:?} does not announce: {e}"));
                let again = ServerRecord::from_txt(announced(&txt));
                assert_eq!(again.as_ref(), Ok(&record), "{txt:?}");
            }
            Err(e) => check_error(&e),
        }
    }
});
