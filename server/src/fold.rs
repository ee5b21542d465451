//! Host lists folded into range notation, and `--gather` output.
//!
//! When the CLI runs a command on many hosts, printing every host name on its
//! own line buries the answer. Like ClusterShell's `nodeset -f` and
//! `dshbak -c`, we fold names that differ only in a trailing number into
//! `prefix[1-3,5]`, and `gather` prints hosts with identical output once,
//! under one folded header.
//!
//! The notation is meant to be read back by people and by ClusterShell, so
//! folding is lossless: expanding a folded list (a range's padding is the
//! width of its zero-padded start) gives exactly the input names again.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// One host's output as shown by `--gather`.
#[derive(Debug, Clone, Copy)]
pub struct HostOutput<'a> {
    /// The host name, as the CLI shows it (may carry a `:port`).
    pub host: &'a str,
    /// What the host printed; shown as lossy UTF-8.
    pub output: &'a [u8],
}

/// The shortest header rule, as `dshbak -c` prints it.
const MIN_RULE: usize = 16;

/// Folds host names into range notation: `ws1,ws2,ws3,ws5` → `ws[1-3,5]`.
///
/// Names that share a prefix and end in a decimal number fold together.
/// A zero-padded number (`ws01`) keeps its padding and folds only with
/// numbers of the same width; numbers without padding fold regardless of
/// width (`ws9,ws10` → `ws[9-10]`). A name without a trailing number, or
/// with a `:` in it (`host:port`, IPv6), is kept whole. Duplicates and empty
/// names are dropped. Groups are joined with `,` in [`host_order`] of their
/// first host, so the result is deterministic.
pub fn fold_hosts<S: AsRef<str>>(hosts: &[S]) -> String {
    // prefix → (number, digits as written); the digits decide the padding.
    let mut numbered: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    let mut whole: Vec<&str> = Vec::new();
    for host in hosts {
        let host = host.as_ref();
        if host.is_empty() {
            continue;
        }
        match split_number(host) {
            Some((prefix, digits, value)) => {
                numbered.entry(prefix).or_default().push((value, digits))
            }
            None => whole.push(host),
        }
    }

    // (first host, folded text) per group, sorted by the first host.
    let mut groups: Vec<(String, String)> = Vec::new();
    for (prefix, numbers) in numbered {
        for (width, values) in padding_classes(&numbers) {
            groups.push(render_class(prefix, width, &values));
        }
    }
    whole.sort_unstable();
    whole.dedup();
    groups.extend(whole.into_iter().map(|h| (h.to_owned(), h.to_owned())));
    groups.sort_by(|a, b| host_order(&a.0, &b.0));

    let texts: Vec<String> = groups.into_iter().map(|(_, text)| text).collect();
    texts.join(",")
}

/// Groups hosts whose output is byte-identical, like `dshbak -c`.
///
/// Each group is a rule of dashes, the folded host list, another rule, then
/// the output (lossy UTF-8, ending with a newline). A rule is as long as the
/// header, at least 16 dashes. An empty output prints nothing below the
/// header. Groups are ordered by their first host in [`host_order`].
pub fn gather(outputs: &[HostOutput<'_>]) -> String {
    // A BTreeMap keeps the order of groups that tie on their first host
    // (one host listed twice with different outputs) deterministic.
    let mut by_output: BTreeMap<&[u8], Vec<&str>> = BTreeMap::new();
    for o in outputs {
        by_output.entry(o.output).or_default().push(o.host);
    }

    let mut groups: Vec<(&str, &[u8], Vec<&str>)> = by_output
        .into_iter()
        .map(|(output, hosts)| {
            let first = hosts
                .iter()
                .copied()
                .min_by(|a, b| host_order(a, b))
                .unwrap_or_default();
            (first, output, hosts)
        })
        .collect();
    groups.sort_by(|a, b| host_order(a.0, b.0));

    let mut out = String::new();
    for (_, output, hosts) in groups {
        let header = fold_hosts(&hosts);
        let rule = "-".repeat(header.chars().count().max(MIN_RULE));
        out.push_str(&rule);
        out.push('\n');
        out.push_str(&header);
        out.push('\n');
        out.push_str(&rule);
        out.push('\n');
        if !output.is_empty() {
            out.push_str(&String::from_utf8_lossy(output));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

/// Natural order of host names: digit runs compare as numbers, so `ws2`
/// sorts before `ws10`.
///
/// Names equal as numbers (`ws01`, `ws1`) fall back to byte order, so the
/// order is total and only equal strings compare `Equal`.
pub fn host_order(a: &str, b: &str) -> Ordering {
    let mut left = chunks(a);
    let mut right = chunks(b);
    loop {
        match (left.next(), right.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = compare_chunks(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Splits `host` into prefix, trailing digits and their value, or `None`
/// when the name must be kept whole.
fn split_number(host: &str) -> Option<(&str, &str, u64)> {
    // A ':' means `host:port` or IPv6. Folding the port would mangle the
    // address, and an IPv6 group is hex, where a decimal range misleads.
    // Brackets and commas are the notation's own syntax; folding a name
    // that holds them could not be read back.
    if host.contains([':', '[', ']', ',']) {
        return None;
    }
    let digits = host.bytes().rev().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    // ASCII digits are one byte each, so this is a char boundary.
    let (prefix, digits) = host.split_at(host.len() - digits);
    // A number too long for u64 is not a host index anyone counts through.
    let value = digits.parse().ok()?;
    Some((prefix, digits, value))
}

/// Whether `digits` carries leading zeros that must be kept (`01`, not `0`).
fn is_padded(digits: &str) -> bool {
    digits.len() > 1 && digits.starts_with('0')
}

/// Sorts the numbers of one prefix into classes by padding width, 0 for
/// "no padding".
///
/// A padded number belongs to its own width. An unpadded number joins the
/// padded class of its width when there is one (`09,10` → `[09-10]`), else
/// the unpadded class. Either way each class prints every number exactly as
/// written.
fn padding_classes(numbers: &[(u64, &str)]) -> BTreeMap<usize, BTreeSet<u64>> {
    let padded: BTreeSet<usize> = numbers
        .iter()
        .filter(|(_, digits)| is_padded(digits))
        .map(|(_, digits)| digits.len())
        .collect();
    let mut classes: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for &(value, digits) in numbers {
        let width = if padded.contains(&digits.len()) {
            digits.len()
        } else {
            0
        };
        classes.entry(width).or_default().insert(value);
    }
    classes
}

/// Renders one padding class as `(first host, text)`: a single host as
/// itself, several as `prefix[a-b,c]`.
fn render_class(prefix: &str, width: usize, values: &BTreeSet<u64>) -> (String, String) {
    let number = |v: u64| format!("{v:0width$}");
    let first = values.first().copied().unwrap_or_default();
    let first_host = format!("{prefix}{}", number(first));
    if values.len() == 1 {
        // `ws1`, not `ws[1]`: brackets would only add noise.
        return (first_host.clone(), first_host);
    }

    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &v in values {
        match runs.last_mut() {
            // checked: u64::MAX is a valid (if silly) host number.
            Some(run) if run.1.checked_add(1) == Some(v) => run.1 = v,
            _ => runs.push((v, v)),
        }
    }

    let ranges: Vec<String> = runs
        .into_iter()
        .map(|(start, end)| {
            if start == end {
                number(start)
            } else {
                format!("{}-{}", number(start), number(end))
            }
        })
        .collect();
    (first_host, format!("{prefix}[{}]", ranges.join(",")))
}

/// Splits a name into maximal runs of ASCII digits and of everything else.
fn chunks(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.bytes().next()?;
        let digit = first.is_ascii_digit();
        let len = rest
            .bytes()
            .position(|b| b.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        // The split falls before an ASCII byte or at the end: a char boundary.
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        Some(chunk)
    })
}

/// Compares two chunks: digit runs by value, anything else by bytes.
///
/// A digit run and a text run differ in their first byte, so byte order
/// settles that case consistently.
fn compare_chunks(x: &str, y: &str) -> Ordering {
    let is_number = |s: &str| s.bytes().next().is_some_and(|b| b.is_ascii_digit());
    if is_number(x) && is_number(y) {
        // Compare as decimal strings so no length of digits can overflow.
        let x = x.trim_start_matches('0');
        let y = y.trim_start_matches('0');
        x.len().cmp(&y.len()).then_with(|| x.cmp(y))
    } else {
        x.cmp(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expands folded notation back to names, the way ClusterShell reads it:
    /// a range is padded to the width of its start when that starts with 0.
    fn expand(folded: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = folded;
        while !rest.is_empty() {
            let end = match (rest.find(','), rest.find('[')) {
                (Some(comma), Some(open)) if open < comma => rest.find(']').unwrap() + 1,
                (Some(comma), _) => comma,
                (None, _) => rest.len(),
            };
            let group = &rest[..end];
            rest = rest[end..].strip_prefix(',').unwrap_or(&rest[end..]);
            let Some((prefix, ranges)) = group.split_once('[') else {
                names.push(group.to_owned());
                continue;
            };
            for range in ranges.trim_end_matches(']').split(',') {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                let width = if is_padded(start) { start.len() } else { 0 };
                let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
                names.extend((start..=end).map(|v| format!("{prefix}{v:0width$}")));
            }
        }
        names
    }

    /// Folds, then checks the result expands back to the input set.
    fn fold(hosts: &[&str]) -> String {
        let folded = fold_hosts(hosts);
        let mut want: Vec<&str> = hosts.iter().copied().filter(|h| !h.is_empty()).collect();
        want.sort_unstable();
        want.dedup();
        let mut got = expand(&folded);
        got.sort_unstable();
        assert_eq!(got, want, "{folded} does not expand back to the input");
        folded
    }

    #[test]
    fn consecutive_numbers_fold_into_ranges() {
        assert_eq!(fold(&["ws1", "ws2", "ws3", "ws5"]), "ws[1-3,5]");
        assert_eq!(fold(&["ws1", "ws2"]), "ws[1-2]");
        assert_eq!(fold(&["ws1", "ws3", "ws5"]), "ws[1,3,5]");
    }

    #[test]
    fn numbers_sort_numerically() {
        assert_eq!(fold(&["ws10", "ws9", "ws2", "ws11"]), "ws[2,9-11]");
    }

    #[test]
    fn zero_padding_is_kept() {
        assert_eq!(fold(&["ws01", "ws02", "ws03"]), "ws[01-03]");
        assert_eq!(fold(&["ws003", "ws001", "ws002"]), "ws[001-003]");
    }

    #[test]
    fn unpadded_numbers_fold_across_widths() {
        assert_eq!(fold(&["ws9", "ws10"]), "ws[9-10]");
        assert_eq!(fold(&["ws8", "ws9", "ws10", "ws100"]), "ws[8-10,100]");
    }

    #[test]
    fn unpadded_number_joins_padded_class_of_its_width() {
        assert_eq!(fold(&["ws09", "ws10"]), "ws[09-10]");
        assert_eq!(fold(&["ws08", "ws09", "ws10", "ws11"]), "ws[08-11]");
    }

    #[test]
    fn different_paddings_stay_apart() {
        assert_eq!(fold(&["ws01", "ws1"]), "ws01,ws1");
        assert_eq!(
            fold(&["ws01", "ws02", "ws001", "ws002"]),
            "ws[001-002],ws[01-02]"
        );
        assert_eq!(fold(&["ws08", "ws09", "ws10", "ws100"]), "ws[08-10],ws100");
        assert_eq!(fold(&["ws9", "ws09", "ws10"]), "ws[09-10],ws9");
    }

    #[test]
    fn zero_alone_is_not_padding() {
        assert_eq!(fold(&["n0", "n1", "n2"]), "n[0-2]");
        assert_eq!(fold(&["n00", "n01"]), "n[00-01]");
    }

    #[test]
    fn single_host_stays_as_is() {
        assert_eq!(fold(&["ws1"]), "ws1");
        assert_eq!(fold(&["ws01"]), "ws01");
        assert_eq!(fold(&["gateway"]), "gateway");
    }

    #[test]
    fn mixed_prefixes_sort_by_prefix_then_number() {
        assert_eq!(
            fold(&["ws2", "db1", "web3", "ws1", "db2"]),
            "db[1-2],web3,ws[1-2]"
        );
        assert_eq!(fold(&["ws-a1", "ws1", "ws-a2"]), "ws1,ws-a[1-2]");
        assert_eq!(
            fold(&["rack2-n1", "rack10-n1", "rack2-n2"]),
            "rack2-n[1-2],rack10-n1"
        );
    }

    #[test]
    fn names_without_trailing_number_stay_whole() {
        assert_eq!(
            fold(&["gateway", "db1", "db2", "backup"]),
            "backup,db[1-2],gateway"
        );
        assert_eq!(fold(&["n1a", "n2a"]), "n1a,n2a");
    }

    #[test]
    fn ipv4_addresses_fold_on_last_octet() {
        assert_eq!(fold(&["172.18.0.3", "172.18.0.2"]), "172.18.0.[2-3]");
        assert_eq!(
            fold(&["10.0.10.1", "10.0.9.1", "10.0.9.2"]),
            "10.0.9.[1-2],10.0.10.1"
        );
    }

    #[test]
    fn ports_are_never_folded() {
        assert_eq!(
            fold(&["10.0.0.6:2222", "10.0.0.5:2222"]),
            "10.0.0.5:2222,10.0.0.6:2222"
        );
        assert_eq!(fold(&["host:22", "host:23"]), "host:22,host:23");
        assert_eq!(fold(&["ws1:22", "ws1", "ws2"]), "ws[1-2],ws1:22");
    }

    #[test]
    fn ipv6_addresses_stay_whole() {
        assert_eq!(fold(&["fe80::a2", "fe80::a1"]), "fe80::a1,fe80::a2");
        assert_eq!(fold_hosts(&["[fe80::1]:22"]), "[fe80::1]:22");
    }

    #[test]
    fn names_with_notation_characters_stay_whole() {
        assert_eq!(fold_hosts(&["rack[1]2", "rack[1]3"]), "rack[1]2,rack[1]3");
    }

    #[test]
    fn huge_numbers_stay_whole() {
        let huge = format!("n{}", "9".repeat(30));
        assert_eq!(fold(&[&huge, "n1"]), format!("n1,{huge}"));
    }

    #[test]
    fn largest_number_does_not_overflow() {
        let max = format!("n{}", u64::MAX);
        let below = format!("n{}", u64::MAX - 1);
        assert_eq!(
            fold(&[&max, &below, "n1"]),
            format!("n[1,{}-{}]", u64::MAX - 1, u64::MAX)
        );
    }

    #[test]
    fn duplicates_are_removed() {
        assert_eq!(fold(&["ws1", "ws2", "ws1"]), "ws[1-2]");
        assert_eq!(fold(&["gateway", "gateway"]), "gateway");
        assert_eq!(fold(&["ws1", "ws1"]), "ws1");
    }

    #[test]
    fn empty_input_and_empty_names() {
        assert_eq!(fold_hosts::<&str>(&[]), "");
        assert_eq!(fold(&["", "ws1", ""]), "ws1");
    }

    #[test]
    fn numeric_names_fold() {
        assert_eq!(fold(&["2", "1", "3"]), "[1-3]");
    }

    #[test]
    fn accepts_owned_strings() {
        let hosts = vec!["ws1".to_owned(), "ws2".to_owned()];
        assert_eq!(fold_hosts(&hosts), "ws[1-2]");
    }

    #[test]
    fn host_order_is_natural() {
        assert_eq!(host_order("ws2", "ws10"), Ordering::Less);
        assert_eq!(host_order("ws10", "ws2"), Ordering::Greater);
        assert_eq!(host_order("db9", "ws1"), Ordering::Less);
        assert_eq!(host_order("ws", "ws1"), Ordering::Less);
        assert_eq!(host_order("ws1", "ws1"), Ordering::Equal);
        assert_eq!(host_order("10.0.0.9", "10.0.0.10"), Ordering::Less);
        let long = format!("n{}", "1".repeat(40));
        assert_eq!(host_order("n2", &long), Ordering::Less);
    }

    #[test]
    fn host_order_equal_only_for_equal_names() {
        assert_ne!(host_order("ws01", "ws1"), Ordering::Equal);
        assert_eq!(
            host_order("ws01", "ws1"),
            host_order("ws1", "ws01").reverse()
        );
    }

    #[test]
    fn host_order_sorts_a_list() {
        let mut hosts = vec!["ws10", "db2", "ws2", "ws1", "db10", "gateway", "ws01"];
        hosts.sort_by(|a, b| host_order(a, b));
        assert_eq!(
            hosts,
            ["db2", "db10", "gateway", "ws01", "ws1", "ws2", "ws10"]
        );
    }

    fn out<'a>(host: &'a str, output: &'a str) -> HostOutput<'a> {
        HostOutput {
            host,
            output: output.as_bytes(),
        }
    }

    #[test]
    fn gather_groups_identical_output() {
        let got = gather(&[
            out("ws02", "ok\n"),
            out("db1", "fail\n"),
            out("ws01", "ok\n"),
            out("ws03", "ok\n"),
            out("db2", "ok\n"),
        ]);
        let want = "\
----------------
db1
----------------
fail
----------------
db2,ws[01-03]
----------------
ok
";
        assert_eq!(got, want);
    }

    #[test]
    fn gather_orders_groups_by_first_host_naturally() {
        let got = gather(&[out("ws10", "b\n"), out("ws2", "a\n"), out("ws9", "b\n")]);
        let want = "\
----------------
ws2
----------------
a
----------------
ws[9-10]
----------------
b
";
        assert_eq!(got, want);
    }

    #[test]
    fn gather_adds_missing_newline() {
        let got = gather(&[out("ws1", "line one\nno newline")]);
        assert_eq!(
            got,
            "----------------\nws1\n----------------\nline one\nno newline\n"
        );
    }

    #[test]
    fn gather_empty_output_prints_only_header() {
        let got = gather(&[out("ws1", ""), out("ws2", ""), out("ws3", "x\n")]);
        let want = "\
----------------
ws[1-2]
----------------
----------------
ws3
----------------
x
";
        assert_eq!(got, want);
    }

    #[test]
    fn gather_rule_grows_with_long_header() {
        let got = gather(&[out("10.0.0.5:2222", "x"), out("10.0.0.6:2222", "x")]);
        let header = "10.0.0.5:2222,10.0.0.6:2222";
        let rule = "-".repeat(header.len());
        assert_eq!(got, format!("{rule}\n{header}\n{rule}\nx\n"));
    }

    #[test]
    fn gather_shows_invalid_utf8_lossily() {
        let got = gather(&[HostOutput {
            host: "ws1",
            output: b"caf\xff\n",
        }]);
        assert_eq!(
            got,
            "----------------\nws1\n----------------\ncaf\u{fffd}\n"
        );
    }

    #[test]
    fn gather_of_nothing_is_empty() {
        assert_eq!(gather(&[]), "");
    }

    #[test]
    fn gather_keeps_one_host_with_two_outputs_in_both_groups() {
        let got = gather(&[out("ws1", "b\n"), out("ws1", "a\n")]);
        let want = "\
----------------
ws1
----------------
a
----------------
ws1
----------------
b
";
        assert_eq!(got, want);
    }
}
