//! The engine end to end in one process: server and agent over an
//! in-memory pipe, real files in temp dirs. Property tests drive random
//! trees through random changes; the rest pin down backup, restore, drift
//! and hostile input.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cfi_groups::hashcache::HashCache;
use cfi_groups::{DataDir, GroupName, Tree};
use cfi_sync::history::DirHistory;
use cfi_sync::{AgentOptions, PassReport, PushOptions, Source};
use proptest::prelude::*;

/// Server and agent share one thread, as over a real pipe they share none:
/// nothing in the engine may rely on a second worker.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// One test machine: a data dir, a target root and the agent's state.
struct Lab {
    _dir: tempfile::TempDir,
    data: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        fs::create_dir_all(data.join("lab")).unwrap();
        fs::create_dir_all(&root).unwrap();
        Self {
            _dir: dir,
            data,
            root,
            state,
        }
    }

    fn group(&self) -> PathBuf {
        self.data.join("lab")
    }

    fn pass_with(&self, dry_run: bool) -> PassReport {
        let group = GroupName::parse("lab").unwrap();
        let layers = DataDir::new(&self.data).layers(&group);
        let tree = Tree::read(&layers, &mut HashCache::default()).unwrap();
        // Manifests the "server" sent before, so changes travel as deltas.
        let history = DirHistory::new(self.state.with_file_name("history"));
        history.put(tree.manifest()).unwrap();
        let opts = AgentOptions {
            root: self.root.clone(),
            state_dir: self.state.clone(),
            exit_after: false,
        };
        let rt = runtime();
        rt.block_on(async {
            let (agent_end, server_end) = tokio::io::duplex(64 << 10);
            let (ar, aw) = tokio::io::split(agent_end);
            let (sr, sw) = tokio::io::split(server_end);
            let push = PushOptions {
                dry_run,
                ..PushOptions::default()
            };
            let (agent, server) = tokio::join!(
                cfi_sync::serve(&opts, ar, aw),
                cfi_sync::push(Arc::new(Source::new(tree)), push, Some(&history), sr, sw)
            );
            let agent = agent.expect("agent side");
            let server = server.expect("server side");
            assert_eq!(agent.files_updated, server.files_updated);
            server
        })
    }

    fn pass(&self) -> PassReport {
        self.pass_with(false)
    }
}

/// A tree as a test sees it: path → what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(Vec<u8>, u32),
    Link(Vec<u8>),
    Dir(u32),
}

type Flat = BTreeMap<Vec<u8>, Node>;

fn os(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

fn write_tree(base: &Path, tree: &Flat) {
    for (p, n) in tree {
        let full = base.join(os(p));
        match n {
            Node::Dir(_) => fs::create_dir_all(&full).unwrap(),
            Node::File(c, mode) => {
                fs::write(&full, c).unwrap();
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Node::Link(t) => symlink(os(t), &full).unwrap(),
        }
    }
    for (p, n) in tree.iter().rev() {
        if let Node::Dir(mode) = n {
            fs::set_permissions(base.join(os(p)), fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
}

fn read_tree(base: &Path) -> Flat {
    let mut out = Flat::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for d in fs::read_dir(&dir).unwrap() {
            let path = d.unwrap().path();
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let node = if meta.is_dir() {
                stack.push(path.clone());
                Node::Dir(mode)
            } else if meta.file_type().is_symlink() {
                Node::Link(
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                Node::File(fs::read(&path).unwrap(), mode)
            };
            out.insert(rel, node);
        }
    }
    out
}

/// Incompressible bytes (xorshift), the same for the same seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn clear(dir: &Path) {
    for d in fs::read_dir(dir).unwrap() {
        let p = d.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

// ---- strategies -------------------------------------------------------

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"c.conf".to_vec(),
        // A prefix of a sibling followed by a byte below '/': the order
        // of a manifest must keep a directory's children right after it.
        b"a-2".to_vec(),
        b"\xff\xfebin".to_vec(),
        "é x".as_bytes().to_vec(),
    ])
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        // Large variants of one shared text, so that versions of a path
        // share blocks and deltas are exercised.
        (2_000usize..40_000, any::<usize>(), any::<u8>()).prop_map(|(len, at, b)| {
            let mut v: Vec<u8> = (0..len)
                .map(|i| b"abcdefgh\n"[i % 9] ^ (i / 97) as u8)
                .collect();
            let at = at % len;
            v[at] = b;
            v
        }),
    ]
}

fn file_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o644, 0o600, 0o755, 0o4755, 0o640])
}

fn dir_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o755, 0o700, 0o750, 0o1777])
}

#[derive(Debug, Clone)]
enum Shape {
    File(Vec<u8>, u32),
    Link(Vec<u8>),
    Dir(u32, BTreeMap<Vec<u8>, Shape>),
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        4 => (content(), file_mode()).prop_map(|(c, m)| Shape::File(c, m)),
        1 => prop::sample::select(vec![b"a".to_vec(), b"../b".to_vec(), b"/etc/passwd".to_vec(), b"nowhere".to_vec()])
            .prop_map(Shape::Link),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        (dir_mode(), prop::collection::btree_map(name(), inner, 0..4))
            .prop_map(|(m, kids)| Shape::Dir(m, kids))
    })
}

fn tree() -> impl Strategy<Value = Flat> {
    prop::collection::btree_map(name(), shape(), 0..5).prop_map(|top| {
        let mut flat = Flat::new();
        fn go(prefix: &[u8], kids: &BTreeMap<Vec<u8>, Shape>, flat: &mut Flat) {
            for (n, s) in kids {
                let mut p = prefix.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(n);
                match s {
                    Shape::File(c, m) => {
                        flat.insert(p, Node::File(c.clone(), *m));
                    }
                    Shape::Link(t) => {
                        flat.insert(p, Node::Link(t.clone()));
                    }
                    Shape::Dir(m, k) => {
                        flat.insert(p.clone(), Node::Dir(*m));
                        go(&p, k, flat);
                    }
                }
            }
        }
        go(b"", &top, &mut flat);
        flat
    })
}

/// Unmanaged files a machine had before cfi: top-level files only, so a
/// group directory never has to replace a non-empty directory of theirs.
fn originals() -> impl Strategy<Value = Flat> {
    prop::collection::btree_map(name(), (content(), file_mode()), 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(n, (c, mode))| (n, Node::File(c, mode)))
            .collect()
    })
}

/// What the root must hold: the tree, plus every original it did not
/// take over (put back when the tree no longer covers it).
fn expected(tree: &Flat, originals: &Flat) -> Flat {
    let mut want = tree.clone();
    for (p, n) in originals {
        want.entry(p.clone()).or_insert_with(|| n.clone());
    }
    want
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random trees, changed at random (adds, edits, deletes, chmods,
    /// file ↔ symlink ↔ directory swaps, non-UTF-8 names), converge to a
    /// byte-identical root; originals are backed up and come back; a pass
    /// with nothing to do changes and hashes nothing.
    #[test]
    fn random_changes_converge(t0 in originals(), t1 in tree(), t2 in tree()) {
        let lab = Lab::new();
        write_tree(&lab.root, &t0);

        write_tree(&lab.group(), &t1);
        let r1 = lab.pass();
        prop_assert!(r1.ok(), "first pass errors: {:?}", r1.errors);
        prop_assert_eq!(read_tree(&lab.root), expected(&t1, &t0));

        clear(&lab.group());
        write_tree(&lab.group(), &t2);
        let r2 = lab.pass();
        prop_assert!(r2.ok(), "second pass errors: {:?}", r2.errors);
        prop_assert_eq!(read_tree(&lab.root), expected(&t2, &t0));

        let r3 = lab.pass();
        prop_assert_eq!(r3.files_updated, 0);
        prop_assert_eq!(r3.files_hashed, 0);
        prop_assert!(r3.changes.is_empty(), "no-op pass changed {:?}", r3.changes);

        // Leaving the tree entirely gives the machine back as it was.
        clear(&lab.group());
        let r4 = lab.pass();
        prop_assert!(r4.ok(), "emptying pass errors: {:?}", r4.errors);
        prop_assert_eq!(read_tree(&lab.root), t0);
    }
}

#[test]
fn drift_is_repaired_reported_and_kept() {
    let lab = Lab::new();
    fs::create_dir_all(lab.group().join("etc")).unwrap();
    fs::write(lab.group().join("etc/motd"), "from the server\n").unwrap();
    assert!(lab.pass().ok());
    fs::write(lab.root.join("etc/motd"), "edited locally\n").unwrap();

    let plan = lab.pass_with(true);
    assert_eq!(plan.drift, ["etc/motd"]);
    assert_eq!(
        fs::read(lab.root.join("etc/motd")).unwrap(),
        b"edited locally\n"
    );
    let diff = plan.changes[0].diff.as_deref().unwrap();
    assert!(
        diff.contains("-edited locally") && diff.contains("+from the server"),
        "{diff}"
    );

    let report = lab.pass();
    assert_eq!(report.drift, ["etc/motd"]);
    assert_eq!(
        fs::read(lab.root.join("etc/motd")).unwrap(),
        b"from the server\n"
    );
    let kept: Vec<_> = fs::read_dir(lab.state.join("drift/etc")).unwrap().collect();
    assert_eq!(kept.len(), 1);
    let kept = kept[0].as_ref().unwrap().path();
    assert_eq!(fs::read(kept).unwrap(), b"edited locally\n");
}

#[test]
fn a_managed_file_deleted_locally_is_drift_and_comes_back() {
    let lab = Lab::new();
    fs::write(lab.group().join("f"), "x").unwrap();
    assert!(lab.pass().ok());
    fs::remove_file(lab.root.join("f")).unwrap();
    let report = lab.pass();
    assert_eq!(report.drift, ["f"]);
    assert_eq!(fs::read(lab.root.join("f")).unwrap(), b"x");
}

#[test]
fn original_is_backed_up_and_restored_with_its_mode() {
    let lab = Lab::new();
    fs::create_dir_all(lab.root.join("etc")).unwrap();
    fs::write(lab.root.join("etc/hosts"), "original\n").unwrap();
    fs::set_permissions(
        lab.root.join("etc/hosts"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::create_dir_all(lab.group().join("etc")).unwrap();
    fs::write(lab.group().join("etc/hosts"), "managed\n").unwrap();
    assert!(lab.pass().ok());
    assert_eq!(fs::read(lab.root.join("etc/hosts")).unwrap(), b"managed\n");
    assert_eq!(
        fs::read(lab.state.join("backup/etc/hosts")).unwrap(),
        b"original\n"
    );

    fs::remove_file(lab.group().join("etc/hosts")).unwrap();
    let report = lab.pass();
    assert_eq!(report.files_restored, 1);
    assert_eq!(fs::read(lab.root.join("etc/hosts")).unwrap(), b"original\n");
    let mode = fs::metadata(lab.root.join("etc/hosts"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    // The directory was the machine's: it stays.
    assert!(lab.root.join("etc").is_dir());
}

#[test]
fn a_delta_moves_little_for_a_small_edit() {
    let lab = Lab::new();
    // Incompressible, so the first pass must move it all.
    let big = noise(0x9e3779b97f4a7c15, 4_000_000);
    fs::write(lab.group().join("big"), &big).unwrap();
    let first = lab.pass();
    assert!(first.bytes_to_agent > 3_000_000);
    let mut edited = big.clone();
    edited[2_000_000..2_001_000].fill(0);
    fs::write(lab.group().join("big"), &edited).unwrap();
    let second = lab.pass();
    assert!(second.ok());
    assert!(
        second.bytes_to_agent < 40_000,
        "sent {}",
        second.bytes_to_agent
    );
    assert_eq!(fs::read(lab.root.join("big")).unwrap(), edited);
}

#[test]
fn merged_usr_links_are_followed_not_replaced() {
    let lab = Lab::new();
    fs::create_dir_all(lab.root.join("usr/bin")).unwrap();
    symlink("usr/bin", lab.root.join("bin")).unwrap();
    fs::create_dir_all(lab.group().join("bin")).unwrap();
    fs::write(lab.group().join("bin/tool"), "#!/bin/sh\n").unwrap();
    assert!(lab.pass().ok());
    assert!(
        fs::symlink_metadata(lab.root.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(lab.root.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
    fs::remove_file(lab.group().join("bin/tool")).unwrap();
    assert!(lab.pass().ok());
    assert!(!lab.root.join("usr/bin/tool").exists());
    assert!(
        fs::symlink_metadata(lab.root.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_non_empty_unmanaged_directory_is_never_replaced() {
    let lab = Lab::new();
    fs::create_dir_all(lab.root.join("srv/data")).unwrap();
    fs::write(lab.root.join("srv/data/precious"), "keep").unwrap();
    fs::create_dir_all(lab.group().join("srv")).unwrap();
    fs::write(lab.group().join("srv/data"), "a file now").unwrap();
    let report = lab.pass();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].path == "srv/data");
    assert_eq!(
        fs::read(lab.root.join("srv/data/precious")).unwrap(),
        b"keep"
    );
}

// ---- hostile or broken input -------------------------------------------

mod bad_input {
    use super::*;
    use cfi_groups::{Entry, Kind, RelPath};
    use cfi_sync::frame::{FrameReader, FrameWriter};
    use cfi_sync::message::{FromAgent, MAGIC, PROTOCOL_VERSION, ToAgent};
    use tokio::io::AsyncWriteExt;

    /// Runs the agent against raw bytes from a fake server; returns the
    /// agent's error and what it sent back.
    fn agent_on(lab: &Lab, bytes: Vec<u8>) -> (String, Vec<FromAgent>) {
        let opts = AgentOptions {
            root: lab.root.clone(),
            state_dir: lab.state.clone(),
            exit_after: false,
        };
        let rt = runtime();
        rt.block_on(async {
            let (agent_end, server_end) = tokio::io::duplex(1 << 20);
            let (ar, aw) = tokio::io::split(agent_end);
            let (sr, mut sw) = tokio::io::split(server_end);
            let feed = async move {
                sw.write_all(&bytes).await.unwrap();
                sw.shutdown().await.unwrap();
            };
            let (result, ()) = tokio::join!(cfi_sync::serve(&opts, ar, aw), feed);
            let mut replies = Vec::new();
            let mut rx = FrameReader::new(sr);
            while let Ok(m) = rx.recv::<FromAgent>().await {
                replies.push(m);
            }
            (result.expect_err("agent must refuse").to_string(), replies)
        })
    }

    fn frames(msgs: &[ToAgent]) -> Vec<u8> {
        let rt = runtime();
        rt.block_on(async {
            let mut out = Vec::new();
            let mut w = FrameWriter::new(&mut out);
            for m in msgs {
                w.send(m).await.unwrap();
            }
            w.flush().await.unwrap();
            drop(w);
            out
        })
    }

    fn entry(path: &str, kind: Kind, data: &[u8]) -> Entry {
        Entry {
            path: RelPath::new(path.as_bytes().to_vec()).unwrap(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime: 0,
            mtime_nsec: 0,
            hash: *blake3::hash(data).as_bytes(),
        }
    }

    fn hello(entries: &[Entry]) -> ToAgent {
        let m = cfi_groups::Manifest::new(entries.to_vec()).unwrap();
        ToAgent::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            dry_run: false,
            digest: m.digest(),
            entries: m.len() as u64,
            manifest: cfi_sync::message::ManifestMode::Full,
        }
    }

    /// The root and its surroundings hold nothing new.
    fn nothing_written(lab: &Lab) {
        assert_eq!(
            fs::read_dir(&lab.root).unwrap().count(),
            0,
            "root was written"
        );
        let parent = lab.root.parent().unwrap();
        let names: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        for n in names {
            assert!(
                ["data", "root", "state"].contains(&n.to_str().unwrap()),
                "{n:?} appeared"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        let lab = Lab::new();
        let (err, replies) = agent_on(&lab, b"SSH-2.0-OpenSSH motd garbage\r\n".to_vec());
        assert!(
            err.contains("oversize") || err.contains("malformed"),
            "{err}"
        );
        assert!(matches!(replies.last(), Some(FromAgent::Failed(_))));
        nothing_written(&lab);
    }

    #[test]
    fn oversize_frame_is_refused() {
        let lab = Lab::new();
        let mut bytes = (64u32 << 20).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 100]);
        let (err, _) = agent_on(&lab, bytes);
        assert!(err.contains("oversize frame"), "{err}");
        nothing_written(&lab);
    }

    #[test]
    fn truncated_frame_is_refused() {
        let lab = Lab::new();
        let e = entry("f", Kind::File, b"data");
        let mut bytes = frames(&[hello(std::slice::from_ref(&e)), ToAgent::Manifest(vec![e])]);
        bytes.truncate(bytes.len() - 3);
        let (err, _) = agent_on(&lab, bytes);
        assert!(err.contains("truncated frame"), "{err}");
        nothing_written(&lab);
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let lab = Lab::new();
        let bytes = frames(&[ToAgent::Hello {
            magic: *b"notcfi!!",
            version: PROTOCOL_VERSION,
            dry_run: false,
            digest: [0; 32],
            entries: 0,
            manifest: cfi_sync::message::ManifestMode::Full,
        }]);
        assert!(agent_on(&lab, bytes).0.contains("not speaking cfi-sync"));
        let bytes = frames(&[ToAgent::Hello {
            magic: MAGIC,
            version: 99,
            dry_run: false,
            digest: [0; 32],
            entries: 0,
            manifest: cfi_sync::message::ManifestMode::Full,
        }]);
        assert!(agent_on(&lab, bytes).0.contains("protocol 99"));
    }

    /// A manifest path is patched on the wire into `../f`, `/etc` or
    /// `a//b` (same length, so the frame stays well-formed).
    #[test]
    fn escaping_paths_are_refused() {
        for evil in ["../f", "/etc", "a//b", "a/.."] {
            let lab = Lab::new();
            let e = entry("abcd", Kind::File, b"owned");
            let mut bytes = frames(&[
                hello(std::slice::from_ref(&e)),
                ToAgent::Manifest(vec![e]),
                ToAgent::ManifestEnd,
            ]);
            let at = bytes.windows(4).rposition(|w| w == b"abcd").unwrap();
            bytes[at..at + 4].copy_from_slice(evil.as_bytes());
            let (err, _) = agent_on(&lab, bytes);
            assert!(err.contains("unsafe path"), "{evil}: {err}");
            nothing_written(&lab);
        }
    }

    #[test]
    fn a_file_under_a_symlink_is_refused() {
        let lab = Lab::new();
        let link = entry("a", Kind::Symlink(b"/etc".to_vec()), b"/etc");
        let file = entry("a/passwd", Kind::File, b"owned");
        let m = vec![link, file];
        let digest = {
            // Manifest::new refuses it; a hostile server would send it anyway.
            let mut h = blake3::Hasher::new();
            h.update(b"x");
            *h.finalize().as_bytes()
        };
        let bytes = frames(&[
            ToAgent::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                dry_run: false,
                digest,
                entries: 2,
                manifest: cfi_sync::message::ManifestMode::Full,
            },
            ToAgent::Manifest(m),
            ToAgent::ManifestEnd,
        ]);
        let (err, _) = agent_on(&lab, bytes);
        assert!(err.contains("no parent directory entry"), "{err}");
        nothing_written(&lab);
    }

    #[test]
    fn data_not_asked_for_is_refused() {
        let lab = Lab::new();
        let e = entry("f", Kind::File, b"data");
        let bytes = frames(&[
            hello(std::slice::from_ref(&e)),
            ToAgent::Manifest(vec![e]),
            ToAgent::ManifestEnd,
            ToAgent::Data {
                index: 7,
                encoding: cfi_sync::message::Encoding::Whole,
                chunk: serde_bytes::ByteBuf::from(vec![1, 2, 3]),
                last: true,
            },
        ]);
        let (err, _) = agent_on(&lab, bytes);
        assert!(err.contains("not asked for"), "{err}");
        // The pass died before the commit: no file appeared.
        assert!(!lab.root.join("f").exists());
    }

    #[test]
    fn content_that_does_not_match_its_hash_is_not_installed() {
        let lab = Lab::new();
        let e = entry("f", Kind::File, b"expected");
        let bad = zstd::bulk::compress(b"EXPECTED", 3).unwrap();
        let bytes = frames(&[
            hello(std::slice::from_ref(&e)),
            ToAgent::Manifest(vec![e]),
            ToAgent::ManifestEnd,
            ToAgent::Data {
                index: 0,
                encoding: cfi_sync::message::Encoding::Whole,
                chunk: serde_bytes::ByteBuf::from(bad),
                last: true,
            },
            ToAgent::Commit,
        ]);
        let opts = AgentOptions {
            root: lab.root.clone(),
            state_dir: lab.state.clone(),
            exit_after: false,
        };
        let rt = runtime();
        let report = rt.block_on(async {
            let (agent_end, server_end) = tokio::io::duplex(1 << 20);
            let (ar, aw) = tokio::io::split(agent_end);
            let (mut sr, mut sw) = tokio::io::split(server_end);
            sw.write_all(&bytes).await.unwrap();
            let drain = async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut sr, &mut sink).await;
            };
            let (r, ()) = tokio::join!(cfi_sync::serve(&opts, ar, aw), drain);
            r.unwrap()
        });
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0].message.contains("does not match"),
            "{:?}",
            report.errors
        );
        assert!(!lab.root.join("f").exists());
        assert_eq!(
            fs::read_dir(&lab.root).unwrap().count(),
            0,
            "temp left behind"
        );
    }
}

#[test]
fn a_changed_tree_travels_as_a_manifest_delta() {
    use cfi_sync::message::ManifestMode;
    let lab = Lab::new();
    for d in 0..10 {
        fs::create_dir_all(lab.group().join(format!("d{d}"))).unwrap();
        for f in 0..30 {
            fs::write(lab.group().join(format!("d{d}/f{f}")), format!("{d} {f}\n")).unwrap();
        }
    }
    let first = lab.pass();
    assert_eq!(first.manifest, ManifestMode::Full);
    fs::write(lab.group().join("d3/f7"), "changed\n").unwrap();
    fs::remove_dir_all(lab.group().join("d9")).unwrap();
    fs::write(lab.group().join("new"), "added\n").unwrap();
    let second = lab.pass();
    assert!(second.ok(), "{:?}", second.errors);
    assert_eq!(second.manifest, ManifestMode::Delta);
    assert_eq!(second.files_deleted, 30);
    assert!(
        second.bytes_to_agent < 4_000,
        "sent {}",
        second.bytes_to_agent
    );
    assert_eq!(read_tree(&lab.root), read_tree(&lab.group()));
    let third = lab.pass();
    assert_eq!(third.manifest, ManifestMode::Unchanged);
    assert!(third.changes.is_empty());
}

#[test]
fn large_files_travel_in_chunks_compressed_or_raw() {
    let lab = Lab::new();
    // Text over several data chunks (compressed chunk by chunk), random
    // data (sent raw), and a file of exactly two chunks (empty last chunk).
    let text: Vec<u8> = (0..700_000u32)
        .flat_map(|i| format!("line {} of a config file\n", i % 977).into_bytes())
        .take(700_000)
        .collect();
    let random = noise(7, 300_000);
    let exact = vec![b'z'; 2 * cfi_sync::frame::DATA_CHUNK];
    fs::write(lab.group().join("text"), &text).unwrap();
    fs::write(lab.group().join("random"), &random).unwrap();
    fs::write(lab.group().join("exact"), &exact).unwrap();
    let report = lab.pass();
    assert!(report.ok(), "{:?}", report.errors);
    assert!(report.bytes_to_agent < (text.len() / 4 + random.len() + 40_000) as u64);
    assert_eq!(fs::read(lab.root.join("text")).unwrap(), text);
    assert_eq!(fs::read(lab.root.join("random")).unwrap(), random);
    assert_eq!(fs::read(lab.root.join("exact")).unwrap(), exact);
}

#[test]
fn a_tree_cannot_touch_the_agents_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab {
        data: dir.path().join("data"),
        root: dir.path().join("root"),
        state: dir.path().join("root/var/lib/cfi-client"),
        _dir: dir,
    };
    fs::create_dir_all(lab.group().join("var/lib/cfi-client")).unwrap();
    fs::write(lab.group().join("var/lib/cfi-client/ledger"), "overwrite").unwrap();
    fs::write(lab.group().join("var/lib/other"), "fine").unwrap();
    let report = lab.pass();
    let refused: Vec<&str> = report.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(refused, ["var/lib/cfi-client", "var/lib/cfi-client/ledger"]);
    assert_eq!(fs::read(lab.root.join("var/lib/other")).unwrap(), b"fine");
    assert_ne!(fs::read(lab.state.join("ledger")).unwrap(), b"overwrite");
}
