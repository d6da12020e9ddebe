//! Bounds on what one policy may ask of Cedar's parser, validator and evaluator.
//!
//! All three recurse over the policy's structure without a limit of their own, so a short
//! policy source such as a few hundred nested parentheses would exhaust a thread's stack and
//! abort the whole process. Loading therefore:
//! 1. scans each source before Cedar sees it, refusing brackets nested more than
//!    [`MAX_NESTING`] deep and policies of more than [`MAX_OPERATORS`] operators (which bound
//!    what the parser needs);
//! 2. parses and validates on a thread of its own with a [`LOAD_STACK`] stack, ample for
//!    anything that passed the scan;
//! 3. refuses, once parsed, expressions nested more than [`MAX_EXPRESSION_DEPTH`] deep, so
//!    that every policy loaded can be decided on an ordinary thread's stack.

use crate::policies::Problem;

/// Brackets (`(`, `[`, `{`) open at once anywhere in a source, counting each policy's own
/// scope and condition braces.
pub const MAX_NESTING: usize = 32;

/// Operators in one policy: `&&`, `||`, comparisons, arithmetic, `!`, `.` (attribute access
/// and method calls), `in`, `has`, `like`, `is`, `if` and every opening bracket. A chain of
/// `&&` or `+` nests as deep as it is long once parsed, so this bounds the parser's depth
/// too. Literals, names and commas do not count: a set of a thousand agents is one operator.
pub const MAX_OPERATORS: usize = 1024;

/// How deep an expression may nest once parsed, as Cedar's JSON form of the policy measures
/// it (two levels of JSON per operator; parentheses add none). Cedar's evaluator stops with
/// "recursion limit reached" (and the policy counts as failed: a permit does not match, a
/// forbid denies) when a thread's stack runs low; at this depth an unoptimized build still
/// decides on a 2 MiB thread, as tokio's workers have. A long chain such as
/// `a && b && c && d` nests as deep as it is long; grouped, `(a && b) && (c && d)`, it nests
/// only as deep as its groups.
pub const MAX_EXPRESSION_DEPTH: usize = 32;

/// The stack of the thread that parses and validates a policy set: far more than sources
/// within the bounds need (about 16 MiB in an unoptimized build). Only what is touched is
/// ever committed.
pub(crate) const LOAD_STACK: usize = 64 << 20;

/// Operators spelled with two characters.
const PAIRS: [&[u8; 2]; 6] = [b"&&", b"||", b"==", b"!=", b"<=", b">="];

/// Operators spelled with one character (brackets are counted where they open).
const SINGLES: &[u8] = b"<>+-*!.";

/// Keywords that are operators.
const KEYWORDS: [&str; 5] = ["if", "in", "has", "like", "is"];

/// Scans `text` (the source `name`) for brackets nested too deep and policies with too many
/// operators, skipping string literals and comments. Returns the first problem found, with
/// its location; a source within the bounds gives none.
pub(crate) fn scan(name: &str, text: &str) -> Option<Problem> {
    let bytes = text.as_bytes();
    let problem = |at: usize, message: String| {
        Some(Problem {
            source: name.to_owned(),
            location: Some(crate::policies::line_column(text, at)),
            policy: None,
            message,
        })
    };
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let next = bytes.get(i + 1).copied();
        match b {
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
                continue;
            }
            b'/' if next == Some(b'/') => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                operators += 1;
                if depth > MAX_NESTING {
                    return problem(
                        i,
                        format!(
                            "brackets nested more than {MAX_NESTING} deep: split the condition or name its parts with several policies"
                        ),
                    );
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => operators = 0,
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
                {
                    i += 1;
                }
                if text.get(start..i).is_some_and(|w| KEYWORDS.contains(&w)) {
                    operators += 1;
                }
            }
            _ if next.is_some_and(|n| PAIRS.contains(&&[b, n])) => {
                operators += 1;
                i += 1;
            }
            _ if SINGLES.contains(&b) => operators += 1,
            _ => {}
        }
        if operators > MAX_OPERATORS {
            return problem(
                i,
                format!(
                    "more than {MAX_OPERATORS} operators in one policy: split it into several policies"
                ),
            );
        }
        if !(b.is_ascii_alphabetic() || b == b'_') {
            i += 1;
        }
    }
    None
}

/// The problem with a parsed policy whose JSON form nests `json_depth` levels, if it nests
/// deeper than [`MAX_EXPRESSION_DEPTH`] allows.
pub(crate) fn too_deep(json_depth: usize) -> Option<String> {
    // The policy itself, its conditions and a condition's body take the first few levels.
    const OUTER: usize = 4;
    (json_depth > 2 * MAX_EXPRESSION_DEPTH + OUTER).then(|| {
        format!(
            "an expression nested more than {MAX_EXPRESSION_DEPTH} deep: group long chains with parentheses, as in `(a && b) && (c && d)`, or split the policy"
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn message(text: &str) -> Option<String> {
        scan("t.cedar", text).map(|p| p.to_string())
    }

    #[test]
    fn ordinary_policies_pass() {
        assert_eq!(message(crate::BASE_POLICIES), None);
        let set: String = (0..5000)
            .map(|n| format!("Agent::\"spiffe://example.org/agent/a/n{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let big = format!("permit (principal, action, resource) when {{ principal in [{set}] }};");
        assert_eq!(message(&big), None);
    }

    #[test]
    fn nesting_is_bounded_with_a_location() {
        let ok = format!(
            "permit (principal, action, resource) when {{ {}true{} }};",
            "(".repeat(MAX_NESTING - 1),
            ")".repeat(MAX_NESTING - 1)
        );
        assert_eq!(message(&ok), None);
        let deep = format!(
            "permit (principal, action, resource)\n when {{ {}true{} }};",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        let m = message(&deep).unwrap();
        assert!(m.starts_with("t.cedar:2:"), "{m}");
        assert!(m.contains("nested more than 32 deep"), "{m}");
        // Mixed brackets count alike; closing ones make room again.
        let mixed = format!("{}{}", "([{".repeat(11), "}])".repeat(11));
        assert!(message(&mixed).is_some());
        let wide = "(())".repeat(300);
        assert_eq!(message(&wide), None);
    }

    #[test]
    fn operators_are_counted_per_policy() {
        let chain = |n: usize| {
            format!(
                "permit (principal, action, resource) when {{ true{} }};",
                " && true".repeat(n)
            )
        };
        // The scope's parentheses and the condition's braces count as two.
        assert_eq!(message(&chain(MAX_OPERATORS - 2)), None);
        let m = message(&chain(MAX_OPERATORS - 1)).unwrap();
        assert!(m.contains("more than 1024 operators"), "{m}");
        // Two policies of many operators each are fine.
        assert_eq!(message(&chain(900).repeat(3)), None);
        for op in [
            " || a", " == a", " != a", " <= a", " >= a", " < a", " > a", " + a", " - a", " * a",
            " in a", " has a", " like a", " is a", ".a", "!",
        ] {
            let text = format!("permit (p) when {{ a{} }};", op.repeat(MAX_OPERATORS));
            assert!(message(&text).is_some(), "{op}");
        }
        let ifs = format!(
            "permit (p) when {{ {}true }};",
            "if a then b else ".repeat(MAX_OPERATORS)
        );
        assert!(message(&ifs).is_some());
    }

    #[test]
    fn strings_and_comments_are_skipped() {
        let noise = format!("\"{}\\\"{}\"", "((((".repeat(100), "&&".repeat(2000));
        let text = format!(
            "// {}\npermit (principal, action, resource) when {{ context.note == {noise} }};",
            "[[[[".repeat(100)
        );
        assert_eq!(message(&text), None);
        // Identifiers containing keywords are not keywords.
        let names = format!("permit (p) when {{ {} }};", "inside_ishas ".repeat(5000));
        assert_eq!(message(&names), None);
        // An unterminated string or comment ends the scan without a panic.
        assert_eq!(message("permit (p) when { \"abc\\"), None);
        assert_eq!(message("// ((((("), None);
    }

    #[test]
    fn json_depth_maps_to_expression_depth() {
        assert_eq!(too_deep(2 * MAX_EXPRESSION_DEPTH + 4), None);
        assert!(too_deep(2 * MAX_EXPRESSION_DEPTH + 5).is_some());
    }
}
