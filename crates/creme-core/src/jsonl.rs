//! Append-only JSONL logs that survive being killed (`samples.jsonl`, `edits.jsonl`,
//! `traces.jsonl`): each record is one line written whole, so after a crash only the last line
//! can be torn (no newline). Reading a log keeps its finished records and says where the torn
//! tail starts; the caller, which owns the file, truncates it there and appends after.

use std::fmt;

/// The finished records of a log's text.
#[derive(Clone, Debug, PartialEq)]
pub struct Log<T> {
    /// One per finished, non-blank line, in order.
    pub records: Vec<T>,
    /// Bytes of the finished lines: the length to truncate the file to before appending.
    pub keep: usize,
    /// Bytes of a torn last line after them (0: none).
    pub torn: usize,
}

/// A finished line that does not parse: an error, never dropped silently (only a torn tail is).
#[derive(Clone, Debug, PartialEq)]
pub struct LineError {
    /// 1-based line number in the text.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: a finished line does not parse ({})",
            self.line, self.message
        )
    }
}

impl std::error::Error for LineError {}

/// Parse every finished line of `text` with `parse` (blank lines are skipped); a last line
/// without its newline is torn by a crash mid-write and is left out.
pub fn parse_log<T, E: fmt::Display>(
    text: &str,
    mut parse: impl FnMut(&str) -> Result<T, E>,
) -> Result<Log<T>, LineError> {
    let mut records = Vec::new();
    let mut keep = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break;
        }
        keep += line.len();
        let line_text = line.trim_end();
        if line_text.trim().is_empty() {
            continue;
        }
        let record = parse(line_text).map_err(|e| LineError {
            line: i + 1,
            message: e.to_string(),
        })?;
        records.push(record);
    }
    Ok(Log {
        records,
        keep,
        torn: text.len() - keep,
    })
}

/// `record` as one log line, its newline included.
pub fn line<T: serde::Serialize>(record: &T) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Result<Log<serde_json::Value>, LineError> {
        parse_log(text, |l| serde_json::from_str(l))
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_its_start_is_where_appends_go() {
        let text = "{\"a\":1}\n{\"a\":2}\n{\"a\":";
        let log = values(text).unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.records[1]["a"], 2);
        assert_eq!(log.keep, "{\"a\":1}\n{\"a\":2}\n".len());
        assert_eq!(log.torn, "{\"a\":".len());
        assert_eq!(log.keep + log.torn, text.len());
    }

    #[test]
    fn a_whole_log_keeps_everything_and_an_empty_one_nothing() {
        let log = values("{\"a\":1}\n").unwrap();
        assert_eq!((log.records.len(), log.keep, log.torn), (1, 8, 0));
        let empty = values("").unwrap();
        assert_eq!((empty.records.len(), empty.keep, empty.torn), (0, 0, 0));
    }

    #[test]
    fn a_corrupt_finished_line_is_an_error_naming_its_line() {
        let e = values("{\"a\":1}\nnot json\n{\"a\":3}\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("line 2: "), "{e}");
        // A torn tail is no error, however it looks.
        assert_eq!(values("{\"a\":1}\nnot json").unwrap().records.len(), 1);
    }

    #[test]
    fn blank_lines_are_kept_in_the_file_but_give_no_record() {
        let log = values("{\"a\":1}\n\n  \r\n{\"a\":2}\n").unwrap();
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.keep, "{\"a\":1}\n\n  \r\n{\"a\":2}\n".len());
        // Line numbers count the blank lines.
        let e = values("\n\nx\n").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn a_written_line_reads_back() {
        let text = line(&serde_json::json!({"a": "x\ny"})).unwrap();
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        assert_eq!(values(&text).unwrap().records[0]["a"], "x\ny");
    }
}
