/// `println!` through [`print_out`]: a reader gone ends the command quietly.
macro_rules! outln {
    () => {
        $crate::commands::print_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::commands::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `println!` through [`announce`]: for a running hub or responder, which goes on whether or
/// not anyone reads what it announces.
macro_rules! announceln {
    ($($arg:tt)*) => {
        $crate::commands::announce(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` through [`note`]: for what goes on (a responder, a listener), whose lines on
/// standard error must not stop it when nobody reads them any more (`eprintln!` panics then).
macro_rules! noteln {
    ($($arg:tt)*) => {
        $crate::commands::note(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) mod agent;
pub(crate) mod attack;
pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod bench_rpc;
pub(crate) mod bench_suite;
pub(crate) mod demo;
pub(crate) mod floor;
pub(crate) mod grants;
pub(crate) mod hub;
pub(crate) mod keys;
pub(crate) mod nats;
pub(crate) mod policy;
pub(crate) mod quarantine;
pub(crate) mod rpc;
pub(crate) mod scale;
pub(crate) mod scratch;
pub(crate) mod usage;

/// Writes `args` to standard output and flushes it.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()
}

/// Writes `args` to standard output (the CLI's every write there, by [`outln!`] and
/// [`print_json`], but for [`announce`]'s). When whoever reads it is gone (`entente audit
/// tail --follow | head -1`), the command ends there, quietly and with success, as `listen`
/// does; another error writing (a full disk) ends it with a failure.
pub(crate) fn print_out(args: std::fmt::Arguments<'_>) {
    match write_out(args) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes `args` to standard output whatever becomes of it: for what goes on (a running hub
/// or responder, whose lines announce it: a reader gone, such as a supervisor that read the
/// first line, must not stop it) and for what ends with a status of its own (a failure, a
/// denial: a reader gone must not turn it into a success).
pub(crate) fn announce(args: std::fmt::Arguments<'_>) {
    let _ = write_out(args);
}

/// Writes `args` to standard error whatever becomes of it, as [`announce`] writes to standard
/// output: a reader gone (a supervisor that read the first line) must not stop a running
/// responder or listener, nor turn a failure into a panic.
pub(crate) fn note(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// [`print_json`] through [`announce`].
pub(crate) fn announce_json(value: &impl serde::Serialize) {
    announce(format_args!("{}\n", json_line(value)));
}

/// Prints `value` as one line of JSON, with [`json_line`]'s escapes: every JSON the CLI
/// prints goes through here or [`announce_json`].
pub(crate) fn print_json(value: &impl serde::Serialize) {
    print_out(format_args!("{}\n", json_line(value)));
}

/// `value` with its control and invisible formatting characters escaped (`\n`, `\u{1b}`,
/// `\u{202e}`): text a peer chose, printed in a line of its own, can't start another line,
/// drive the terminal or reorder what is shown.
pub(crate) fn clean(value: &str) -> String {
    use entente_types::text::is_deceptive;
    if value.chars().any(is_deceptive) {
        value
            .chars()
            .map(|c| {
                if is_deceptive(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        value.to_owned()
    }
}

/// `text` of several lines, each [`clean`]: its line breaks stay (the structure a hub's
/// explanation has), what else could drive the terminal or reorder a line is escaped.
pub(crate) fn clean_lines(text: &str) -> String {
    let lines: Vec<String> = text.split('\n').map(clean).collect();
    lines.join("\n")
}

/// `value` as one line of JSON whose control and invisible formatting characters are written
/// as JSON `\u` escapes (`\u202e`): a line a script decodes to exactly the same strings, and
/// that a terminal shows as it is (text a peer chose can't reorder or hide what is printed).
pub(crate) fn json_line(value: &impl serde::Serialize) -> String {
    let mut out = Vec::new();
    let mut writer = serde_json::Serializer::with_formatter(&mut out, VisibleJson);
    if value.serialize(&mut writer).is_err() {
        // Values of this crate always serialize; say so rather than print half a line.
        return "null".to_owned();
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The compact JSON formatter, but with [`entente_types::text::is_deceptive`] characters
/// escaped in strings (JSON escapes only what is below U+0020 by itself).
struct VisibleJson;

impl serde_json::ser::Formatter for VisibleJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some((at, c)) = rest
            .char_indices()
            .find(|&(_, c)| entente_types::text::is_deceptive(c))
        {
            let (plain, tail) = rest.split_at(at);
            writer.write_all(plain.as_bytes())?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            rest = tail.get(c.len_utf8()..).unwrap_or_default();
        }
        writer.write_all(rest.as_bytes())
    }
}

/// `fields` with the payload added: as `payload` when it is UTF-8, else as `payload_base64`
/// (standard alphabet, padded), so that a binary payload is not lost to replacement
/// characters.
pub(crate) fn with_payload(
    mut fields: serde_json::Map<String, serde_json::Value>,
    payload: &[u8],
) -> serde_json::Value {
    use base64::Engine as _;
    match std::str::from_utf8(payload) {
        Ok(text) => fields.insert("payload".to_owned(), text.into()),
        Err(_) => fields.insert(
            "payload_base64".to_owned(),
            base64::engine::general_purpose::STANDARD
                .encode(payload)
                .into(),
        ),
    };
    serde_json::Value::Object(fields)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_what_a_terminal_would_hide_and_decode_to_the_same_text() {
        // A bidi override, a zero-width space, a tag character (beyond the BMP: a surrogate
        // pair), a control character; the zero-width joiner of an emoji stays.
        let text = "pay \u{202e}x\u{200b}y\u{e0041} \u{1b}[2K 👩\u{200d}💻";
        let line = json_line(&serde_json::json!({ "payload": text }));
        assert_eq!(
            line,
            "{\"payload\":\"pay \\u202ex\\u200by\\udb40\\udc41 \\u001b[2K 👩\u{200d}💻\"}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["payload"], text);
    }

    #[test]
    fn lines_keep_their_breaks_and_lose_what_else_hides() {
        let text = "DENY: `a\u{1b}[2K`\n  by `p\u{202e}q`\r\n";
        assert_eq!(
            clean_lines(text),
            "DENY: `a\\u{1b}[2K`\n  by `p\\u{202e}q`\\r\n"
        );
    }

    #[test]
    fn payloads_that_are_not_utf8_are_kept_in_base64() {
        let value = with_payload(serde_json::Map::new(), b"\xff\x00ok");
        assert_eq!(value, serde_json::json!({ "payload_base64": "/wBvaw==" }));
        let value = with_payload(serde_json::Map::new(), "é".as_bytes());
        assert_eq!(value, serde_json::json!({ "payload": "é" }));
    }

    /// This crate's code outside its test modules, file by file (named from `src/`), without
    /// comment lines: what the checks of how it prints read.
    fn code() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        files.sort();
        assert!(files.len() > 10, "{files:?}");
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let code: Vec<&str> = code
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect();
                let name = path.strip_prefix(&src).unwrap().display().to_string();
                (name, code.join("\n"))
            })
            .collect()
    }

    /// Where `word` (a macro or function name) is called in `code`, whole: `print!(` is not
    /// found in `eprint!(`.
    fn calls<'a>(code: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
        code.match_indices(word).filter_map(move |(at, _)| {
            let before = code[..at].chars().next_back();
            let whole = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
            whole.then_some(at)
        })
    }

    #[test]
    fn every_write_to_standard_output_goes_through_print_out() {
        for (file, code) in code() {
            for word in ["println!(", "print!("] {
                if let Some(at) = calls(&code, word).next() {
                    panic!(
                        "{file}: `{word}` (use `outln!` or `announceln!`: a closed pipe panics it): {}",
                        code[at..].lines().next().unwrap()
                    );
                }
            }
            // Besides the helpers, only `request`'s reply, bytes as they came.
            let allowed = usize::from(file == "commands/mod.rs" || file == "commands/rpc.rs");
            let direct = calls(&code, "stdout()").count();
            assert!(
                direct <= allowed,
                "{file} writes to `stdout()` {direct} times"
            );
        }
    }

    /// The arguments of the call of a macro or function whose name ends at `open` (the index
    /// of its `(` in `code`), with each string literal replaced by the names it formats
    /// inline (`"{line}"` is `line`): what a value printed is made of.
    fn arguments(code: &str, open: usize) -> (String, usize) {
        let mut out = String::new();
        let mut depth = 0usize;
        let mut chars = code[open..].char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                '"' => {
                    let mut literal = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => drop(chars.next()),
                            '"' => break,
                            c => literal.push(c),
                        }
                    }
                    for inline in literal.split('{').skip(1) {
                        let name = inline.split(['}', ':']).next().unwrap_or_default();
                        out.push(' ');
                        out.push_str(name);
                    }
                    continue;
                }
                _ => {}
            }
            out.push(c);
            if depth == 0 {
                return (out, open + at + 1);
            }
        }
        (out, code.len())
    }

    #[test]
    fn every_json_printed_goes_through_json_line() {
        let mut bypasses = Vec::new();
        for (file, code) in code() {
            // A JSON value or text put in a line (`outln!("{}", json!(…))`, a `format!` of a
            // `to_json()`) rather than given to `print_json` or `announce_json`, which escape
            // with `json_line`.
            for word in [
                "outln!(",
                "announceln!(",
                "eprintln!(",
                "noteln!(",
                "eprint!(",
                "write!(",
                "writeln!(",
                "format!(",
                "format_args!(",
            ] {
                for at in calls(&code, word) {
                    let (args, _) = arguments(&code, at + word.len() - 1);
                    let names = args.split(|c: char| !(c.is_alphanumeric() || c == '_'));
                    if names
                        .filter(|n| n.contains("json"))
                        .any(|n| n != "json_line")
                    {
                        bypasses.push(format!("{file}: {word}{}", &args[1..]));
                    }
                }
            }
            for word in ["to_string(", "to_string_pretty(", "to_vec(", "to_writer("] {
                let serializer = format!("serde_json::{word}");
                if code.contains(&serializer) {
                    bypasses.push(format!("{file}: {serializer}"));
                }
            }
            if file != "commands/mod.rs" {
                // A JSON value made text some other way.
                for at in calls(&code, "json!(") {
                    let (args, end) = arguments(&code, at + "json!(".len() - 1);
                    if code[end..].trim_start().starts_with(".to_string()") {
                        bypasses.push(format!("{file}: json!{args}.to_string()"));
                    }
                }
            }
        }
        assert!(
            bypasses.is_empty(),
            "JSON printed without `print_json`:\n{}",
            bypasses.join("\n")
        );
    }
}
