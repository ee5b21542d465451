//! Both records: their TXT shape, what parsing refuses, and that building
//! then parsing gives the record back.

use super::*;
use crate::key::tests::{FINGERPRINT, PUB_LINE};
use crate::rotation::tests::pair;
use base64ct::{Base64, Encoding};
use proptest::prelude::*;

/// Borrows owned pairs the way a caller hands an mDNS library's TXT over.
fn props(pairs: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
        .collect()
}

fn borrowed(props: &[(String, Option<Vec<u8>>)]) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
    props.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
}

fn server(pairs: &[(&str, &str)]) -> Result<ServerRecord, RecordError> {
    ServerRecord::from_txt(borrowed(&props(pairs)))
}

fn client(pairs: &[(&str, &str)]) -> Result<ClientRecord, RecordError> {
    ClientRecord::from_txt(borrowed(&props(pairs)))
}

fn line() -> String {
    PublicKey::parse(PUB_LINE).unwrap().line()
}

#[test]
fn server_txt_has_the_documented_shape() {
    let ((seed, old), (_, new)) = (pair(1), pair(2));
    let record = ServerRecord {
        key: new.clone(),
        rotation: Some(Rotation::sign(&seed, &old, &new).unwrap()),
    };
    let txt = record.to_txt().unwrap();
    let keys: Vec<&str> = txt.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["v", "key", "fp", "prev", "rot"]);
    assert_eq!(txt[1].1.len(), 80);
    assert_eq!(txt[3].1, old.fingerprint());
    let parsed = ServerRecord::from_txt(txt.iter().map(|(k, v)| (&**k, Some(v.as_bytes()))));
    assert_eq!(parsed, Ok(record.clone()));
    assert!(record.rotation.unwrap().is_signed(&old, &new));
}

#[test]
fn server_records_are_checked() {
    let line = line();
    let ok = server(&[("v", "1"), ("KEY", &line), ("Fp", FINGERPRINT)]).unwrap();
    assert_eq!(ok.key.fingerprint(), FINGERPRINT);
    assert_eq!(ok.rotation, None);
    let other_fp = pair(1).1.fingerprint();
    let sig = "A".repeat(86) + "==";
    let cases: [(&[(&str, &str)], &str); 10] = [
        (&[("key", &line), ("fp", FINGERPRINT)], "TXT v is missing"),
        (
            &[("v", "2"), ("key", &line)],
            "TXT v=\"2\": unsupported version",
        ),
        (&[("v", "1"), ("fp", FINGERPRINT)], "TXT key is missing"),
        (&[("v", "1"), ("key", &line)], "TXT fp is missing"),
        (
            &[("v", "1"), ("key", "ssh-rsa AAAA"), ("fp", FINGERPRINT)],
            "TXT key: invalid ssh public key: only ssh-ed25519 keys are supported, got ssh-rsa",
        ),
        (
            &[("v", "1"), ("key", &line), ("fp", "SHA256:x")],
            "TXT fp: invalid key fingerprint",
        ),
        (
            &[("v", "1"), ("key", &line), ("fp", &other_fp)],
            "a record whose fingerprint does not match its key is refused",
        ),
        (
            &[
                ("v", "1"),
                ("key", &line),
                ("fp", FINGERPRINT),
                ("prev", FINGERPRINT),
            ],
            "TXT prev is set without rot",
        ),
        (
            &[
                ("v", "1"),
                ("key", &line),
                ("fp", FINGERPRINT),
                ("rot", &sig),
            ],
            "TXT rot is set without prev",
        ),
        (
            &[
                ("v", "1"),
                ("key", &line),
                ("fp", FINGERPRINT),
                ("prev", FINGERPRINT),
                ("rot", "AAAA"),
            ],
            "TXT rot=\"AAAA\": not a rotation signature",
        ),
    ];
    for (pairs, want) in cases {
        let err = server(pairs).unwrap_err().to_string();
        assert!(err.contains(want), "{pairs:?}: {err}");
    }
    let bad = [("v".to_owned(), None), ("key".to_owned(), None)];
    let err = ServerRecord::from_txt(borrowed(&bad)).unwrap_err();
    assert_eq!(err.to_string(), "TXT v has no value");
    let bad = [
        ("v".to_owned(), Some(b"1".to_vec())),
        ("key".to_owned(), Some(b"\xff".to_vec())),
    ];
    let err = ServerRecord::from_txt(borrowed(&bad)).unwrap_err();
    assert_eq!(err.to_string(), "TXT key=\"\u{fffd}\" is not UTF-8");
}

#[test]
fn the_builder_refuses_what_the_parser_would() {
    let mut record = ServerRecord {
        key: pair(1).1,
        rotation: Some(Rotation {
            previous: "SHA256:x".to_owned(),
            signature: "A".repeat(86) + "==",
        }),
    };
    assert!(matches!(
        record.to_txt(),
        Err(RecordError::Fingerprint { key: "prev", .. })
    ));
    record.rotation = Some(Rotation {
        previous: FINGERPRINT.to_owned(),
        signature: "x".to_owned(),
    });
    assert!(matches!(
        record.to_txt(),
        Err(RecordError::Signature { .. })
    ));
    let mut record = ClientRecord {
        id: MachineId::parse("0123abcd").unwrap(),
        group: GroupField::Invalid("Lab".to_owned()),
        hostkey: None,
    };
    let err = record.to_txt().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("TXT group: invalid group name \"Lab\""),
        "{err}"
    );
    record.group = GroupField::Missing;
    record.hostkey = Some("SHA256:x".to_owned());
    assert!(matches!(
        record.to_txt(),
        Err(RecordError::Fingerprint { key: "hostkey", .. })
    ));
}

#[test]
fn client_records_are_checked() {
    let id = "31862ba31c4ca07a0b1bcd343afa817a";
    let ok = client(&[
        ("v", "1"),
        ("id", id),
        ("group", "lab"),
        ("hostkey", FINGERPRINT),
    ]);
    let ok = ok.unwrap();
    assert_eq!(ok.id.as_str(), id);
    assert_eq!(
        ok.group,
        GroupField::Valid(GroupName::parse("lab").unwrap())
    );
    assert_eq!(ok.hostkey.as_deref(), Some(FINGERPRINT));
    assert_eq!(
        client(&[("v", "1"), ("id", id)]).unwrap().group,
        GroupField::Missing
    );
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("id", id)], "TXT v is missing"),
        (&[("v", "0"), ("id", id)], "unsupported version"),
        (&[("v", "1")], "TXT id is missing"),
        (
            &[("v", "1"), ("id", "XYZ")],
            "TXT id: invalid machine id \"XYZ\"",
        ),
        (
            &[("v", "1"), ("id", id), ("hostkey", "abc")],
            "TXT hostkey: invalid key fingerprint",
        ),
    ];
    for (pairs, want) in cases {
        let err = client(pairs).unwrap_err().to_string();
        assert!(err.contains(want), "{pairs:?}: {err}");
    }
}

#[test]
fn an_invalid_group_keeps_the_record() {
    let id = "0123abcd";
    let long = "Ä".repeat(100);
    for (raw, kept) in [
        ("Lab", "Lab"),
        ("", ""),
        ("../etc", "../etc"),
        (&long, &long[..128]),
    ] {
        let record = client(&[("v", "1"), ("id", id), ("group", raw)]).unwrap();
        assert_eq!(record.group, GroupField::Invalid(kept.to_owned()));
        assert_eq!(record.group.valid(), None);
    }
    let raw = [
        ("v".to_owned(), Some(b"1".to_vec())),
        ("id".to_owned(), Some(id.as_bytes().to_vec())),
        ("group".to_owned(), Some(b"l\xffb".to_vec())),
    ];
    let record = ClientRecord::from_txt(borrowed(&raw)).unwrap();
    assert_eq!(record.group, GroupField::Invalid("l\u{fffd}b".to_owned()));
    let raw = [&raw[..2], &[("group".to_owned(), None)]].concat();
    let record = ClientRecord::from_txt(borrowed(&raw)).unwrap();
    assert_eq!(record.group, GroupField::Invalid(String::new()));
}

#[test]
fn service_types_are_the_documented_ones() {
    assert_eq!(CLIENT_SERVICE, "_cfi-client._tcp.local.");
    assert_eq!(SERVER_SERVICE, "_cfi-server._tcp.local.");
}

fn any_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey::from_raw)
}

fn any_rotation() -> impl Strategy<Value = Rotation> {
    (any_key(), proptest::collection::vec(any::<u8>(), 64)).prop_map(|(old, sig)| Rotation {
        previous: old.fingerprint(),
        signature: Base64::encode_string(&sig),
    })
}

/// Keys a record reads, in any case, and others.
fn any_txt_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "v", "key", "fp", "prev", "rot", "id", "group", "hostkey"
        ])
        .prop_flat_map(|k| {
            proptest::collection::vec(any::<bool>(), k.len()).prop_map(move |upper| {
                k.chars()
                    .zip(upper)
                    .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                    .collect()
            })
        }),
        ".{0,12}",
    ]
}

/// Values that are near-valid as often as random.
fn any_txt_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    let near = prop::sample::select(vec![
        "1".to_owned(),
        line(),
        FINGERPRINT.to_owned(),
        "A".repeat(86) + "==",
        "0123abcd".to_owned(),
        "lab".to_owned(),
    ]);
    proptest::option::weighted(
        0.9,
        prop_oneof![
            near.prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..300),
        ],
    )
}

proptest! {
    #[test]
    fn server_records_round_trip(key in any_key(), rotation in proptest::option::of(any_rotation())) {
        let record = ServerRecord { key, rotation };
        let txt = record.to_txt().unwrap();
        for (k, v) in &txt {
            prop_assert!(k.len() + 1 + v.len() <= 255);
        }
        let parsed = ServerRecord::from_txt(txt.iter().map(|(k, v)| (&**k, Some(v.as_bytes()))));
        prop_assert_eq!(parsed, Ok(record));
    }

    #[test]
    fn client_records_round_trip(
        id in "[0-9a-f]{8,64}",
        group in proptest::option::of("[a-z0-9][a-z0-9._-]{0,62}"),
        hostkey in proptest::option::of(any_key()),
    ) {
        let record = ClientRecord {
            id: MachineId::parse(&id).unwrap(),
            group: group.map(|g| GroupName::parse(&g).unwrap()).into(),
            hostkey: hostkey.map(|k| k.fingerprint()),
        };
        let txt = record.to_txt().unwrap();
        let parsed = ClientRecord::from_txt(txt.iter().map(|(k, v)| (&**k, Some(v.as_bytes()))));
        prop_assert_eq!(parsed, Ok(record));
    }

    #[test]
    fn parsing_anything_never_panics(
        txt in proptest::collection::vec((any_txt_key(), any_txt_value()), 0..12),
    ) {
        let pairs = || txt.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        if let Err(err) = ServerRecord::from_txt(pairs()) {
            prop_assert!(!err.to_string().contains(['\n', '\x1b']));
        }
        if let Err(err) = ClientRecord::from_txt(pairs()) {
            prop_assert!(!err.to_string().contains(['\n', '\x1b']));
        }
    }
}
