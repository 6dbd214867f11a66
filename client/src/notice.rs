//! What the library has to tell the person at the terminal, handed back as
//! data instead of printed.
//!
//! Only the commands print: on stderr, or on the chat's screen while it is
//! up, where a stray write would tear the screen apart. So library code that
//! has something to say (a message that could not be read, a contact who
//! reads from another relay, a history that was not updated) returns it as a
//! [`Notice`], and the command that called it shows it wherever its output
//! goes. The wording stays here, beside the code that knows what happened.

/// One line for the person at the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Worth knowing (`sotto: TEXT`).
    Note(String),
    /// Something went wrong, or may have (`sotto: warning: TEXT`).
    Warning(String),
}

impl Notice {
    /// The text, without the prefix its kind gets when shown.
    pub fn text(&self) -> &str {
        match self {
            Notice::Note(text) | Notice::Warning(text) => text,
        }
    }
}
