//! Free text shown to people (a held message's purpose, a grant's reason, a payload printed
//! in a line): which characters could make it read as something else.

/// Whether `c` can change how a line reads without being seen: a control character (line
/// breaks, terminal escapes, C1 controls), a line or paragraph separator, or an invisible
/// formatting character that reorders or hides text (bidirectional marks, embeddings,
/// overrides and isolates, zero-width space, word joiners, the soft hyphen, interlinear
/// annotation marks, the byte-order mark, tag characters that can smuggle hidden text). The
/// zero-width joiner and non-joiner are not: words in several scripts, and emoji, need them.
pub fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'
                | '\u{200E}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::is_deceptive;

    #[test]
    fn controls_and_invisible_formatting_are_deceptive_and_text_is_not() {
        for c in [
            '\n',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{9b}',
            '\u{202E}',
            '\u{2067}',
            '\u{200B}',
            '\u{FEFF}',
            '\u{2028}',
            '\u{00AD}',
            '\u{E0041}',
        ] {
            assert!(is_deceptive(c), "{:?}", c);
        }
        for c in [
            'a', ' ', 'é', '中', '\u{2010}', '\u{2070}', '€', '\u{200D}', '\u{200C}',
        ] {
            assert!(!is_deceptive(c), "{:?}", c);
        }
    }
}
