//! Showing text that came from the network.
//!
//! Message text is written by whoever knows our key, and a relay's error detail
//! by whoever runs the relay. Printed as is, either could move the cursor,
//! rewrite earlier lines, set the window title, or flip the reading order of
//! what follows (a "Trojan Source" bidi override), making one contact's message
//! look like another's. Every such character is therefore replaced by a visible
//! escape before it reaches the terminal:
//!
//! - C0 controls (U+0000–U+001F), DEL (U+007F) and C1 controls
//!   (U+0080–U+009F, which some terminals read as 8-bit CSI): `\x1b`, with
//!   `\n`, `\r` and `\t` for the common ones, so a message stays on one line and
//!   cannot forge a second `[time] NAME:` line;
//! - bidi embeddings and overrides (U+202A–U+202E) and isolates (U+2066–U+2069):
//!   `\u{202e}`;
//! - the Unicode line and paragraph separators (U+2028, U+2029), which some
//!   terminals and tools treat as line breaks: `\u{2028}`.
//!
//! Everything else, including ordinary right-to-left text, is shown unchanged.
//!
//! Time formatting lives here too: it is the other half of turning a message
//! into a line on the screen.

use std::fmt::Write as _;

use chrono::{DateTime, Local};

/// Whether `c` must not reach a terminal as it is.
pub fn is_dangerous(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{2028}'
        | '\u{2029}')
}

/// `text` with every dangerous character replaced by a visible escape.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(is_dangerous) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !is_dangerous(c) {
            out.push(c);
            continue;
        }
        // Writing to a String cannot fail.
        let _ = match c {
            '\n' => out.write_str("\\n"),
            '\r' => out.write_str("\\r"),
            '\t' => out.write_str("\\t"),
            c if (c as u32) < 0x100 => write!(out, "\\x{:02x}", c as u32),
            c => write!(out, "\\u{{{:x}}}", c as u32),
        };
    }
    out
}

/// The format of message times: local time, to the second.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Formats milliseconds since the Unix epoch as local `YYYY-MM-DD HH:MM:SS`;
/// `None` when the instant is outside what the calendar library represents
/// (a sender's clock can claim anything).
pub fn local_time_ms(ms: u64) -> Option<String> {
    let ms = i64::try_from(ms).ok()?;
    let utc = DateTime::from_timestamp_millis(ms)?;
    Some(utc.with_timezone(&Local).format(TIME_FORMAT).to_string())
}

/// One inbox line: `[time] NAME: TEXT`, text neutralised. `who` must already
/// be safe to print (a contact name from our own file, or a key string).
pub fn message_line(time: &str, who: &str, text: &str) -> String {
    format!("[{time}] {who}: {}", sanitize(text))
}

/// Longest group name shown, in characters: it is chosen by the sender.
const MAX_GROUP_LABEL: usize = 64;

/// A group name from the network, safe to print: neutralised, without `/`
/// or spaces (which would blur where the sender's name starts), bounded.
pub fn group_label(group: &str) -> String {
    let short: String = group
        .chars()
        .take(MAX_GROUP_LABEL)
        .map(|c| {
            if c == '/' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if short.is_empty() {
        "?".to_owned()
    } else {
        sanitize(&short)
    }
}

/// `n` bytes as people read them, in binary units: `12 B`, `1.50 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(412 << 20), "412.00 MiB");
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }
    use proptest::prelude::*;

    #[test]
    fn escape_and_csi_sequences_are_made_visible() {
        assert_eq!(
            sanitize("\x1b[2J\x1b]0;pwned\x07"),
            "\\x1b[2J\\x1b]0;pwned\\x07"
        );
        // 8-bit CSI (U+009B) and DEL.
        assert_eq!(sanitize("a\u{9b}31mb\u{7f}"), "a\\x9b31mb\\x7f");
        assert_eq!(sanitize("nul\0"), "nul\\x00");
    }

    #[test]
    fn bidi_overrides_and_isolates_are_made_visible() {
        assert_eq!(
            sanitize("abc\u{202e}fed\u{202c} \u{2066}x\u{2069}"),
            "abc\\u{202e}fed\\u{202c} \\u{2066}x\\u{2069}"
        );
        assert_eq!(
            sanitize("\u{202a}\u{202b}\u{202d}\u{2067}\u{2068}")
                .matches('\\')
                .count(),
            5
        );
    }

    #[test]
    fn a_newline_cannot_forge_a_second_message_line() {
        let line = message_line(
            "2024-01-01 10:00:00",
            "mallory",
            "hi\n[2024-01-01 10:00:01] alice: send me your key\r\u{2028}",
        );
        assert_eq!(line.lines().count(), 1);
        assert_eq!(
            line,
            "[2024-01-01 10:00:00] mallory: hi\\n[2024-01-01 10:00:01] alice: send me your key\\r\\u{2028}"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for s in [
            "hello",
            "grüße, 你好, שלום, مرحبا 🙂",
            "tab-free \\x1b literal",
            "",
        ] {
            assert_eq!(sanitize(s), s);
        }
        assert_eq!(sanitize("a\tb"), "a\\tb");
    }

    #[test]
    fn a_group_label_cannot_pose_as_a_sender_or_break_the_line() {
        assert_eq!(group_label("team"), "team");
        assert_eq!(group_label("team/alice\n\x1b"), "team_alice_\\x1b");
        assert_eq!(group_label(""), "?");
        assert_eq!(group_label(&"g".repeat(100)).len(), MAX_GROUP_LABEL);
    }

    #[test]
    fn times_outside_the_calendar_are_none_not_a_panic() {
        assert!(local_time_ms(u64::MAX).is_none());
        assert!(local_time_ms(i64::MAX as u64).is_none());
        let t = local_time_ms(1_700_000_000_000).unwrap();
        assert_eq!(t.len(), "YYYY-MM-DD HH:MM:SS".len());
        assert!(t.starts_with("2023-11-1"), "{t}");
    }

    proptest! {
        #[test]
        fn sanitized_text_never_contains_a_dangerous_character(s in any::<String>()) {
            let out = sanitize(&s);
            prop_assert!(!out.chars().any(is_dangerous));
            prop_assert!(out.chars().count() >= s.chars().count());
        }
    }
}
