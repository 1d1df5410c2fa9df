//! Slurm's compressed host lists (`gpu[01-04,07],login1`), read for --master-addr when the job
//! runs under Slurm: node 0 of a job step is the first host of SLURM_JOB_NODELIST.

/// One host name pattern: text and bracketed ranges, e.g. `a[1-2]b[3-4]` has four parts.
#[derive(Debug)]
enum Part {
    Text(String),
    /// `(low, high, width)`; the width keeps zero padding (`[01-04]` → `01`, `02`, ...).
    Ranges(Vec<(u64, u64, usize)>),
}

/// The variable that names the job's hosts, and its value: SLURM_JOB_NODELIST, or the older
/// SLURM_NODELIST.
pub fn nodelist_from_env() -> Option<(&'static str, String)> {
    ["SLURM_JOB_NODELIST", "SLURM_NODELIST"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
}

/// The first host of a host list.
pub fn first_host(list: &str) -> Result<String, String> {
    let patterns = parse(list)?;
    let first = patterns.first().ok_or_else(|| format!("host list {list:?} names no host"))?;
    Ok(first
        .iter()
        .map(|part| match part {
            Part::Text(t) => t.clone(),
            Part::Ranges(r) => format!("{:0width$}", r[0].0, width = r[0].2),
        })
        .collect())
}

/// Every host of a host list, in Slurm's order (the last bracket varies fastest).
#[cfg(test)]
pub fn expand(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for pattern in parse(list)? {
        let mut names = vec![String::new()];
        for part in pattern {
            let pieces: Vec<String> = match part {
                Part::Text(t) => vec![t],
                Part::Ranges(r) => {
                    r.iter().flat_map(|&(lo, hi, width)| (lo..=hi).map(move |n| format!("{n:0width$}"))).collect()
                }
            };
            names = names.iter().flat_map(|n| pieces.iter().map(move |p| format!("{n}{p}"))).collect();
        }
        hosts.extend(names);
    }
    Ok(hosts)
}

/// Splits at the commas outside brackets and parses each host pattern.
fn parse(list: &str) -> Result<Vec<Vec<Part>>, String> {
    let list = list.trim();
    let mut patterns = Vec::new();
    let (mut start, mut depth) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                patterns.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("host list {list:?}: unbalanced or nested brackets"));
        }
    }
    if depth != 0 {
        return Err(format!("host list {list:?}: a '[' is not closed"));
    }
    patterns.push(&list[start..]);
    // Slurm tolerates empty items (`a,,b`); they name no host.
    patterns
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| parse_pattern(p).map_err(|e| format!("host list {list:?}: {e}")))
        .collect()
}

fn parse_pattern(pattern: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        match rest.find('[') {
            Some(0) => {
                // Brackets are balanced and not nested here (checked by `parse`).
                let close = rest.find(']').unwrap_or(rest.len());
                parts.push(Part::Ranges(parse_ranges(&rest[1..close])?));
                rest = rest.get(close + 1..).unwrap_or("");
            }
            Some(open) => {
                parts.push(Part::Text(rest[..open].to_string()));
                rest = &rest[open..];
            }
            None => {
                parts.push(Part::Text(rest.to_string()));
                rest = "";
            }
        }
    }
    Ok(parts)
}

fn parse_ranges(inside: &str) -> Result<Vec<(u64, u64, usize)>, String> {
    inside
        .split(',')
        .map(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            let number = |s: &str| {
                s.parse::<u64>()
                    .ok()
                    .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| format!("[{inside}]: {s:?} is not a number"))
            };
            let (low, high) = (number(lo)?, number(hi)?);
            if low > high {
                return Err(format!("[{inside}]: the range {range} runs backwards"));
            }
            Ok((low, high, lo.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_expand_as_slurm_writes_them() {
        let table: &[(&str, &[&str])] = &[
            ("login1", &["login1"]),
            ("gpu[01-04,07],login1", &["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "login1"]),
            ("node-[1-3]", &["node-1", "node-2", "node-3"]),
            ("n[8-10]", &["n8", "n9", "n10"]),
            ("n[098-100]", &["n098", "n099", "n100"]),
            ("a[1-2]b[3-4]", &["a1b3", "a1b4", "a2b3", "a2b4"]),
            ("[1-2]x", &["1x", "2x"]),
            ("127.0.0.[1-2]", &["127.0.0.1", "127.0.0.2"]),
            ("a,,b,", &["a", "b"]),
            (" c[5] ", &["c5"]),
        ];
        for (list, hosts) in table {
            assert_eq!(expand(list).unwrap(), *hosts, "{list}");
            assert_eq!(first_host(list).unwrap(), hosts[0], "{list}");
        }
    }

    #[test]
    fn malformed_host_lists_are_errors_naming_the_list() {
        for list in ["", ",", "gpu[1-", "gpu]1[", "gpu[[1]]", "gpu[a-b]", "gpu[4-2]", "gpu[]", "gpu[1-2-3]", "gpu[+1]"]
        {
            let err = first_host(list).expect_err(list);
            assert!(err.contains(&format!("{:?}", list.trim())) || err.contains("no host"), "{list}: {err}");
        }
    }
}
