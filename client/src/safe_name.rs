//! Names for received files.
//!
//! A file's name comes from its sender, and a sender can be hostile: the name
//! is used to create a file, so it must not be able to point anywhere but
//! inside the directory the user chose (`../x`, `/etc/x`, `C:\x`), hide in a
//! terminal (`a\nb`, escape sequences, a bidi override turning `exe.txt` into
//! `txt.exe` on screen), or be no name at all (empty, `.`, `..`).
//!
//! [`safe_file_name`] keeps only the last path component (split on `/` and on
//! `\`, which other systems use), drops control characters (C0, DEL, C1),
//! bidi controls and line separators, trims whitespace, replaces what is left
//! if it is empty, `.` or `..` by [`FALLBACK_NAME`], and caps the length at
//! [`MAX_NAME_BYTES`] on a character boundary, keeping a short extension. The
//! result is one plain component: no separator, never absolute, never `.` or
//! `..`. Hidden names (`.bashrc`) stay as they are: inside the chosen
//! directory they are harmless, and renaming them would surprise more than it
//! protects. The one prefix refused is sotto's own temporary files'
//! (`.sotto-...`), so a received file can never pass for another download in
//! progress. Names Windows reserves for devices (`CON`, `nul.txt`, `COM1`,
//! ...) get a leading `_`, so a tree or a file received on one system can be
//! copied to another.
//!
//! [`safe_component`] does the same for one component of a path in a
//! received directory tree, where separators are not split on but replaced
//! (`a\\b` becomes `a_b`): the tree's structure is its manifest's lists of
//! components, never a separator inside a name.

use crate::display::is_dangerous;

/// The name used when nothing usable is left of the offered one.
pub const FALLBACK_NAME: &str = "received-file";
/// Longest name produced, in bytes (file systems allow 255; room is left for
/// ` (N)` when the name is taken).
pub const MAX_NAME_BYTES: usize = 200;
/// Longest extension (with its dot) kept when a name is shortened.
const MAX_EXTENSION_BYTES: usize = 16;
/// The prefix of sotto's temporary files in the download directory.
pub(crate) const TEMP_PREFIX: &str = ".sotto-";

/// Characters dropped from names beyond [`is_dangerous`]: the bidi marks,
/// invisible but able to reorder what surrounds them on screen.
fn is_invisible_bidi(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// A safe file name for a file offered as `offered`.
pub fn safe_file_name(offered: &str) -> String {
    let last = offered.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|&c| !is_dangerous(c) && !is_invisible_bidi(c))
        .collect();
    let mut name = cap(cleaned.trim(), MAX_NAME_BYTES);
    if name.is_empty() || name == "." || name == ".." {
        return FALLBACK_NAME.to_owned();
    }
    if name.starts_with(TEMP_PREFIX) {
        name.replace_range(..1, "_");
    }
    if is_windows_device(&name) {
        name.insert(0, '_');
    }
    name
}

/// A safe name for one component of a path in a received tree: as
/// [`safe_file_name`], with separators inside it replaced by `_`.
pub fn safe_component(offered: &str) -> String {
    safe_file_name(&offered.replace(['/', '\\'], "_"))
}

/// Whether Windows takes `name` for a device: `CON`, `PRN`, `AUX`, `NUL`,
/// `COM0`-`COM9`, `LPT0`-`LPT9` (any case), alone or before an extension,
/// trailing dots and spaces ignored as Windows ignores them.
fn is_windows_device(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default();
    let stem = stem.trim_end_matches([' ', '.']).to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => {
            let b = stem.as_bytes();
            b.len() == 4
                && (stem.starts_with("COM") || stem.starts_with("LPT"))
                && b[3].is_ascii_digit()
        }
    }
}

/// Splits `name` into stem and extension (with its dot): the extension starts
/// at the last dot, unless that dot begins the name (`.bashrc` has none).
pub(crate) fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// `name` shortened to at most `max` bytes on a character boundary, keeping
/// a short extension.
fn cap(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, ext) = split_extension(name);
    if ext.len() > MAX_EXTENSION_BYTES || ext.contains(char::is_whitespace) {
        // Not an extension worth keeping: a plain cut.
        return truncate(name, max).trim_end().to_owned();
    }
    let stem = truncate(stem, max - ext.len()).trim_end();
    format!("{stem}{ext}")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    #[test]
    fn hostile_names_become_one_plain_component() {
        let long_stem = "a".repeat(300);
        let table: &[(&str, &str)] = &[
            ("report.pdf", "report.pdf"),
            ("../x", "x"),
            ("../../../../etc/passwd", "passwd"),
            ("/etc/x", "x"),
            ("/", FALLBACK_NAME),
            ("dir/", FALLBACK_NAME),
            ("a\nb", "ab"),
            ("..", FALLBACK_NAME),
            (".", FALLBACK_NAME),
            ("", FALLBACK_NAME),
            ("   ", FALLBACK_NAME),
            (" \t..\n ", FALLBACK_NAME),
            ("C:\\x", "x"),
            ("C:\\Windows\\..\\evil.exe", "evil.exe"),
            ("..\\..\\x", "x"),
            ("\u{202e}txt.exe", "txt.exe"),
            ("photo\u{202e}gpj.exe", "photogpj.exe"),
            ("a\u{2066}b\u{2069}c\u{200f}", "abc"),
            ("\x1b[31mred\x1b[0m.txt", "[31mred[0m.txt"),
            ("bell\x07\u{9b}\u{7f}", "bell"),
            ("  padded  ", "padded"),
            (".bashrc", ".bashrc"),
            ("...", "..."),
            ("grüße 你好.txt", "grüße 你好.txt"),
            (".sotto-0123.part", "_sotto-0123.part"),
            ("x/.sotto-ab.part", "_sotto-ab.part"),
            ("CON", "_CON"),
            ("nul.txt", "_nul.txt"),
            ("com1.tar.gz", "_com1.tar.gz"),
            ("LPT9", "_LPT9"),
            ("aux .log", "_aux .log"),
            ("console", "console"),
            ("COM10", "COM10"),
            ("xCON", "xCON"),
        ];
        for (offered, want) in table {
            assert_eq!(safe_file_name(offered), *want, "offered {offered:?}");
        }
        let long = safe_file_name(&format!("{long_stem}.tar.gz"));
        assert_eq!(long.len(), MAX_NAME_BYTES);
        assert!(long.ends_with("a.gz"), "{long}");
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        // 'é' is 2 bytes: 150 of them are 300 bytes.
        let name = format!("{}.txt", "é".repeat(150));
        let safe = safe_file_name(&name);
        assert!(safe.len() <= MAX_NAME_BYTES, "{}", safe.len());
        assert!(safe.ends_with("é.txt"), "{safe}");
        // A long "extension" is not kept as one.
        let name = format!("x.{}", "e".repeat(250));
        let safe = safe_file_name(&name);
        assert_eq!(safe.len(), MAX_NAME_BYTES);
        assert!(safe.starts_with("x.eee"), "{safe}");
        // No extension: plain cut.
        let safe = safe_file_name(&"z".repeat(201));
        assert_eq!(safe, "z".repeat(200));
    }

    #[test]
    fn hidden_names_stay_inside_the_directory() {
        let dir = Path::new("/downloads");
        for offered in [
            ".bashrc",
            "../.bashrc",
            "/home/u/.bashrc",
            ".ssh/authorized_keys",
        ] {
            let joined = dir.join(safe_file_name(offered));
            assert_eq!(joined.parent(), Some(dir), "{offered:?} -> {joined:?}");
        }
    }

    #[test]
    fn extensions_split_at_the_last_dot_not_a_leading_one() {
        assert_eq!(split_extension("a.tar.gz"), ("a.tar", ".gz"));
        assert_eq!(split_extension(".bashrc"), (".bashrc", ""));
        assert_eq!(split_extension("noext"), ("noext", ""));
        assert_eq!(split_extension(".x.conf"), (".x", ".conf"));
    }

    #[test]
    fn components_keep_their_whole_name() {
        assert_eq!(safe_component("a\\..\\b"), "a_.._b");
        assert_eq!(safe_component("x/y"), "x_y");
        assert_eq!(safe_component("PRN"), "_PRN");
        assert_eq!(safe_component(".."), FALLBACK_NAME);
        assert_eq!(safe_component("photos"), "photos");
    }

    proptest! {
        #[test]
        fn any_name_becomes_a_single_normal_component(offered in any::<String>()) {
            let safe = safe_file_name(&offered);
            prop_assert!(!safe.is_empty());
            prop_assert!(safe.len() <= MAX_NAME_BYTES);
            prop_assert!(!safe.contains('/') && !safe.contains('\\'));
            prop_assert!(!safe.chars().any(is_dangerous));
            prop_assert!(!safe.starts_with(TEMP_PREFIX));
            let components: Vec<_> = Path::new(&safe).components().collect();
            prop_assert_eq!(components.len(), 1);
            prop_assert!(matches!(components[0], Component::Normal(_)), "{:?}", components);
        }
    }
}
