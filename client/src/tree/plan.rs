//! The receiver's reading of a tree's manifest, which its sender wrote and
//! may have written to do harm.
//!
//! Nothing is created until the whole manifest has passed. An entry is
//! refused (and with it the tree) if its path is empty, deeper than
//! [`MAX_DEPTH`], or has a component that is empty, `.`, `..`, holds a `/`
//! or a NUL, or is longer than [`MAX_COMPONENT_LEN`]: no honest sender
//! writes those, and they are how a path escapes. Every other component is
//! cleaned as a received file's name is ([`safe_component`]: no control
//! characters, no Windows device names, no separators). The tree is then
//! refused if two entries come out as the same path, or if a file is also
//! used as a directory; if it has more than [`MAX_ENTRIES`] entries; or if
//! its sizes do not add up to the stream's. Since every component is then
//! one plain name and every path relative, the paths can only name places
//! inside the directory they are unpacked into.

use std::collections::HashMap;
use std::io::Read;

use super::{
    header_len, Entry, EntryKind, MAGIC, MAX_COMPONENT_LEN, MAX_DEPTH, MAX_ENTRIES,
    MAX_MANIFEST_LEN, PREFIX_LEN,
};
use crate::safe_name::safe_component;

/// A manifest that passed, with its paths cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The entries, in the manifest's order (the order of the contents).
    pub entries: Vec<Planned>,
    /// Every directory the tree holds, listed or implied, parents first.
    pub dirs: Vec<Vec<String>>,
    /// Bytes before the first file's contents.
    pub header_len: u64,
}

/// One entry, its path cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Cleaned components.
    pub path: Vec<String>,
    /// What it is.
    pub kind: EntryKind,
}

/// Reads and checks the header of a stream of `stream_size` bytes from `r`,
/// leaving `r` at the first file's contents. The error says why the tree is
/// refused.
pub fn read_plan(r: &mut impl Read, stream_size: u64) -> Result<Plan, Refusal> {
    let mut prefix = [0u8; PREFIX_LEN as usize];
    read(r, &mut prefix)?;
    if &prefix[..16] != MAGIC {
        return Err(Refusal("it does not start as a tree does".into()));
    }
    let len = u32::from_be_bytes([prefix[16], prefix[17], prefix[18], prefix[19]]);
    if len > MAX_MANIFEST_LEN {
        return Err(Refusal(format!(
            "its manifest is {len} bytes, more than the {MAX_MANIFEST_LEN} accepted"
        )));
    }
    let header = header_len(u64::from(len));
    if header > stream_size {
        return Err(Refusal("it is shorter than its manifest".into()));
    }
    let mut manifest = vec![0u8; len as usize];
    read(r, &mut manifest)?;
    let entries = match postcard::take_from_bytes::<Vec<Entry>>(&manifest) {
        Ok((entries, [])) => entries,
        _ => return Err(Refusal("its manifest does not decode".into())),
    };
    // The padding is covered by the offer's hash, but a sender that puts
    // anything there is not one this code knows.
    let mut rest = r.take(header - PREFIX_LEN - u64::from(len));
    let mut buf = [0u8; 4096];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| Refusal(format!("cannot read it: {e}")))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(Refusal("its header's padding is not zeros".into()));
        }
    }
    plan(entries, header, stream_size).map_err(Refusal)
}

/// Why a tree is refused, as one phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

fn read(r: &mut impl Read, buf: &mut [u8]) -> Result<(), Refusal> {
    r.read_exact(buf)
        .map_err(|_| Refusal("it is shorter than its manifest".into()))
}

/// What a path names so far: a file, or a directory listed or implied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    File,
    ListedDir,
    ImpliedDir,
}

/// Checks `entries` and cleans their paths (see the module's doc).
pub fn plan(entries: Vec<Entry>, header_len: u64, stream_size: u64) -> Result<Plan, String> {
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "it has {} entries, more than the {MAX_ENTRIES} accepted",
            entries.len()
        ));
    }
    let mut seen: HashMap<Vec<String>, Seen> = HashMap::with_capacity(entries.len());
    let mut dirs = Vec::new();
    let mut planned = Vec::with_capacity(entries.len());
    let mut total = header_len;
    for entry in entries {
        let path = clean_path(&entry.path)?;
        let shown = path.join("/");
        for depth in 1..path.len() {
            let parent = &path[..depth];
            match seen.get(parent) {
                Some(Seen::File) => {
                    return Err(format!("{shown} is inside {}, a file", parent.join("/")))
                }
                Some(_) => {}
                None => {
                    seen.insert(parent.to_vec(), Seen::ImpliedDir);
                    dirs.push(parent.to_vec());
                }
            }
        }
        match (seen.get(&path).copied(), entry.kind) {
            (None, EntryKind::Dir) => {
                seen.insert(path.clone(), Seen::ListedDir);
                dirs.push(path.clone());
            }
            (Some(Seen::ImpliedDir), EntryKind::Dir) => {
                seen.insert(path.clone(), Seen::ListedDir);
            }
            (None, EntryKind::File { size }) => {
                total = total
                    .checked_add(size)
                    .filter(|&t| t <= stream_size)
                    .ok_or_else(|| "its sizes add up to more than it holds".to_owned())?;
                seen.insert(path.clone(), Seen::File);
            }
            (Some(Seen::ImpliedDir), EntryKind::File { .. }) => {
                return Err(format!("{shown} is both a file and a directory"))
            }
            (Some(_), _) => return Err(format!("{shown} is listed twice")),
        }
        planned.push(Planned {
            path,
            kind: entry.kind,
        });
    }
    if total != stream_size {
        return Err("its sizes add up to less than it holds".into());
    }
    Ok(Plan {
        entries: planned,
        dirs,
        header_len,
    })
}

/// The cleaned components of an entry's path.
fn clean_path(path: &[String]) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Err("an entry has an empty path".into());
    }
    if path.len() > MAX_DEPTH {
        return Err(format!(
            "an entry is {} directories deep, more than the {MAX_DEPTH} accepted",
            path.len()
        ));
    }
    path.iter()
        .map(|c| {
            if c.is_empty() || c == "." || c == ".." || c.contains(['/', '\0']) {
                Err(format!(
                    "an entry's path is not plain names ({})",
                    crate::display::sanitize(&path.join("/"))
                ))
            } else if c.len() > MAX_COMPONENT_LEN {
                Err(format!(
                    "an entry's name is {} bytes, more than the {MAX_COMPONENT_LEN} accepted",
                    c.len()
                ))
            } else {
                Ok(safe_component(c))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::encode_header;

    fn file(path: &[&str], size: u64) -> Entry {
        Entry {
            path: path.iter().map(|s| s.to_string()).collect(),
            kind: EntryKind::File { size },
        }
    }

    fn dir(path: &[&str]) -> Entry {
        Entry {
            path: path.iter().map(|s| s.to_string()).collect(),
            kind: EntryKind::Dir,
        }
    }

    fn check(entries: Vec<Entry>) -> Result<Plan, String> {
        let size: u64 = entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size } => size,
                EntryKind::Dir => 0,
            })
            .sum();
        plan(entries, 4096, 4096 + size)
    }

    #[test]
    fn a_plain_tree_passes_with_its_implied_directories() {
        let plan = check(vec![
            file(&["a", "b", "c.txt"], 3),
            dir(&["empty"]),
            dir(&["a"]),
            file(&["top.bin"], 0),
        ])
        .unwrap();
        assert_eq!(plan.entries.len(), 4);
        let dirs: Vec<String> = plan.dirs.iter().map(|d| d.join("/")).collect();
        assert_eq!(dirs, ["a", "a/b", "empty"]);
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![file(&["..", "x"], 1)], "not plain names"),
            (vec![file(&["a", "..", "..", "x"], 1)], "not plain names"),
            (vec![file(&["/etc/passwd"], 1)], "not plain names"),
            (vec![file(&["a/../../x"], 1)], "not plain names"),
            (vec![file(&["", "x"], 1)], "not plain names"),
            (vec![file(&["."], 1)], "not plain names"),
            (vec![file(&["a\0b"], 1)], "not plain names"),
            (vec![file(&[], 1)], "empty path"),
            (vec![file(&[&"n".repeat(256)], 1)], "bytes, more than"),
            (vec![file(&["x"], 1), file(&["x"], 1)], "listed twice"),
            (vec![dir(&["x"]), dir(&["x"])], "listed twice"),
            (vec![file(&["x"], 1), dir(&["x"])], "listed twice"),
            (
                vec![file(&["x"], 1), file(&["x", "y"], 1)],
                "inside x, a file",
            ),
            (
                vec![file(&["x", "y"], 1), file(&["x"], 1)],
                "both a file and a directory",
            ),
            // Two names that clean to the same one.
            (vec![file(&["a\x1bb"], 1), file(&["ab"], 1)], "listed twice"),
            (vec![file(&["CON"], 1), file(&["_CON"], 1)], "listed twice"),
        ];
        for (entries, want) in cases {
            let err = check(entries.clone()).unwrap_err();
            assert!(err.contains(want), "{entries:?}: {err}");
        }
        let deep: Vec<String> = (0..=MAX_DEPTH).map(|i| i.to_string()).collect();
        let deep: Vec<&str> = deep.iter().map(String::as_str).collect();
        assert!(check(vec![file(&deep, 1)]).unwrap_err().contains("deep"));
    }

    #[test]
    fn names_are_cleaned_not_trusted() {
        let plan = check(vec![
            file(&["a\\..\\b"], 1),
            file(&["\u{202e}txt.exe"], 1),
            file(&["nul.txt"], 1),
            file(&["d", ".sotto-x.part"], 1),
        ])
        .unwrap();
        let paths: Vec<String> = plan.entries.iter().map(|e| e.path.join("/")).collect();
        assert_eq!(paths, ["a_.._b", "txt.exe", "_nul.txt", "d/_sotto-x.part"]);
    }

    #[test]
    fn sizes_must_add_up_to_the_stream() {
        let entries = vec![file(&["a"], 10), file(&["b"], 5)];
        assert!(plan(entries.clone(), 4096, 4111).is_ok());
        assert!(plan(entries.clone(), 4096, 4112)
            .unwrap_err()
            .contains("less than"));
        assert!(plan(entries, 4096, 4110).unwrap_err().contains("more than"));
        let huge = vec![file(&["a"], u64::MAX), file(&["b"], u64::MAX)];
        assert!(plan(huge, 4096, u64::MAX)
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn huge_counts_are_refused_before_anything_is_made() {
        let many: Vec<Entry> = (0..=MAX_ENTRIES)
            .map(|i| file(&[&i.to_string()], 0))
            .collect();
        assert!(check(many).unwrap_err().contains("entries, more than"));
        // A manifest claiming more bytes than the limit is refused on its
        // length alone.
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&(MAX_MANIFEST_LEN + 1).to_be_bytes());
        let err = read_plan(&mut stream.as_slice(), u64::MAX).unwrap_err();
        assert!(err.0.contains("manifest is"), "{err:?}");
        // A list length far beyond the bytes that follow does not decode.
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&5u32.to_be_bytes());
        stream.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        stream.resize(4096, 0);
        let err = read_plan(&mut stream.as_slice(), 4096).unwrap_err();
        assert!(err.0.contains("does not decode"), "{err:?}");
    }

    #[test]
    fn a_header_round_trips_and_its_padding_is_checked() {
        let entries = vec![dir(&["d"]), file(&["d", "f"], 2)];
        let mut stream = encode_header(&entries).unwrap();
        stream.extend_from_slice(b"hi");
        let mut r = stream.as_slice();
        let plan = read_plan(&mut r, stream.len() as u64).unwrap();
        assert_eq!(plan.header_len, 4096);
        assert_eq!(r, b"hi");
        stream[4000] = 1;
        let err = read_plan(&mut stream.as_slice(), stream.len() as u64).unwrap_err();
        assert!(err.0.contains("padding"), "{err:?}");
        let err = read_plan(&mut &b"not a tree at all, no"[..], 21).unwrap_err();
        assert!(err.0.contains("does not start"), "{err:?}");
    }
}
