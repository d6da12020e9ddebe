//! Free text shown to people (a held message's purpose, a grant's reason, a payload printed
//! in a line): which characters could make it read as something else.

/// Whether `c` can change how a line reads without being seen: a control character (line
/// breaks, terminal escapes), or an invisible formatting character that reorders or hides
/// text (bidirectional embeddings, overrides and isolates, zero-width characters, the Arabic
/// letter mark, the byte-order mark).
pub fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::is_deceptive;

    #[test]
    fn controls_and_invisible_formatting_are_deceptive_and_text_is_not() {
        for c in [
            '\n', '\r', '\u{1b}', '\u{7f}', '\u{202E}', '\u{2067}', '\u{200B}', '\u{FEFF}',
        ] {
            assert!(is_deceptive(c), "{:?}", c);
        }
        for c in ['a', ' ', 'é', '中', '\u{2010}', '\u{2070}', '€'] {
            assert!(!is_deceptive(c), "{:?}", c);
        }
    }
}
