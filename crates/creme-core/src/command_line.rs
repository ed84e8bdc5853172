//! Command lines recorded with a run (`command.txt`) and quoted in reports, written so that they
//! repeat on another machine: absolute paths become `$RUNS/...`, relative paths or `$HOME/...`.
//! Pure string work; the caller supplies the machine's places.

use std::path::{Path, PathBuf};

/// The places a recorded command's absolute paths are written relative to, so the command
/// repeats on another machine: the directory holding the run (`$RUNS`), the current directory
/// (commands run from the repository root) and its parent (`../shared`), the home directory
/// (`$HOME`, where the model cache is).
pub struct Places {
    runs: Option<PathBuf>,
    cwd: Option<PathBuf>,
    home: Option<PathBuf>,
}

impl Places {
    /// `/` names no place worth a variable, and a run directory that holds the current one is
    /// better written relative to it (`../x`), so those are dropped.
    pub fn new(runs: Option<PathBuf>, cwd: Option<PathBuf>, home: Option<PathBuf>) -> Places {
        let useful = |p: &PathBuf| p.is_absolute() && p.parent().is_some();
        let runs = runs
            .filter(useful)
            .filter(|r| cwd.as_ref().is_none_or(|c| !c.starts_with(r)));
        Places {
            runs,
            cwd: cwd.filter(useful),
            home: home.filter(useful),
        }
    }

    /// One argument as a shell word: an absolute path in it (the whole argument, or after a
    /// `from:` / `LABEL=` / `--flag=` prefix) is written as `$RUNS/...`, relative to the current
    /// directory (`docs/x`, `../shared/x`) or as `$HOME/...`, whichever holds it first; others
    /// (system files) stay as they are.
    pub fn word(&self, arg: &str) -> String {
        let Some(at) = absolute_path_start(arg) else {
            return quote(arg);
        };
        let (prefix, path) = arg.split_at(at);
        match self.relative(Path::new(path)) {
            (Some(var), rest) => with_variable(prefix, var, &rest),
            (None, rest) => quote(&format!("{prefix}{rest}")),
        }
    }

    /// The `creme` command line of `args`, each written as [`Places::word`] writes it.
    pub fn command(&self, args: &[String]) -> String {
        let words: Vec<String> = args.iter().map(|a| self.word(a)).collect();
        format!("creme {}", words.join(" "))
    }

    /// `path` as (variable, rest after it) or (None, a relative or unchanged path).
    fn relative(&self, path: &Path) -> (Option<&'static str>, String) {
        let under = |root: &Option<PathBuf>| {
            root.as_ref()
                .and_then(|r| path.strip_prefix(r).ok())
                .map(|rest| rest.display().to_string())
        };
        if let Some(rest) = under(&self.runs) {
            return (Some("RUNS"), rest);
        }
        if let Some(rest) = under(&self.cwd) {
            return (None, if rest.is_empty() { ".".into() } else { rest });
        }
        let parent = self
            .cwd
            .as_ref()
            .and_then(|c| c.parent())
            .map(Path::to_path_buf);
        if let Some(rest) = under(&parent.filter(|p| p.parent().is_some())) {
            return (None, format!("../{rest}").trim_end_matches('/').to_string());
        }
        if let Some(rest) = under(&self.home) {
            return (Some("HOME"), rest);
        }
        (None, path.display().to_string())
    }
}

/// Where an absolute path starts in a command-line argument: at 0, or after a `:` or `=`
/// (`from:/x`, `label=/x`, `--out=/x`); not at a `//` (a URL's).
fn absolute_path_start(arg: &str) -> Option<usize> {
    let b = arg.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b'/'
            && (i == 0 || b[i - 1] == b':' || b[i - 1] == b'=')
            && b.get(i + 1) != Some(&b'/')
    })
}

/// Characters a shell leaves alone in an unquoted word.
fn plain(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@".contains(c))
}

/// `s` as one shell word, single-quoted where it needs quoting.
fn quote(s: &str) -> String {
    if !s.is_empty() && plain(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `prefix$VAR/rest` as one shell word that expands the variable: in double quotes where
/// nothing else in it is special there, else the literal parts single-quoted around `"$VAR"`.
fn with_variable(prefix: &str, var: &str, rest: &str) -> String {
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("/{rest}")
    };
    if !format!("{prefix}{rest}").contains(['$', '`', '\\', '"', '!']) {
        return format!("\"{prefix}${var}{rest}\"");
    }
    let part = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            quote(s)
        }
    };
    format!("{}\"${var}\"{}", part(prefix), part(&rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine with its runs in /data/runs, the checkout in /data/creme (the current
    /// directory), the reference data in /data/shared and the home in /users/ann.
    fn machine() -> Places {
        Places::new(
            Some("/data/runs".into()),
            Some("/data/creme".into()),
            Some("/users/ann".into()),
        )
    }

    #[test]
    fn recorded_paths_name_no_place_of_the_machine() {
        let m = machine();
        let cases = [
            ("/data/runs/main", "\"$RUNS/main\""),
            (
                "from:/data/runs/main/edits.jsonl",
                "\"from:$RUNS/main/edits.jsonl\"",
            ),
            (
                "main (logprob layer)=/data/runs/main",
                "\"main (logprob layer)=$RUNS/main\"",
            ),
            ("--out=/data/runs/x y", "\"--out=$RUNS/x y\""),
            ("/data/runs/it's", "\"$RUNS/it's\""),
            ("/data/runs/$x\"y", "\"$RUNS\"'/$x\"y'"),
            ("/data/creme/docs/efficacy.md", "docs/efficacy.md"),
            ("/data/creme", "."),
            (
                "/data/shared/datasets/humaneval-nlpert",
                "../shared/datasets/humaneval-nlpert",
            ),
            (
                "/users/ann/.cache/creme/models/q.gguf",
                "\"$HOME/.cache/creme/models/q.gguf\"",
            ),
            // Not paths of this machine's work: as they are.
            ("/usr/bin/python3", "/usr/bin/python3"),
            ("runs/base", "runs/base"),
            ("clean,C3", "clean,C3"),
            ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x"),
            ("a b", "'a b'"),
            ("", "''"),
        ];
        for (arg, want) in cases {
            assert_eq!(m.word(arg), want, "{arg}");
        }
    }

    #[test]
    fn a_command_line_is_its_arguments_as_words() {
        let args = [
            "report",
            "--setting",
            "a b=/data/runs/x",
            "--doc",
            "/data/creme/d.md",
        ];
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            machine().command(&args),
            "creme report --setting \"a b=$RUNS/x\" --doc d.md"
        );
    }

    #[test]
    fn a_run_directory_holding_the_current_one_is_written_relative_to_it() {
        // --out /data/x from /data/creme: $RUNS would be /data, which holds the checkout.
        let m = Places::new(Some("/data".into()), Some("/data/creme".into()), None);
        assert_eq!(m.word("/data/x"), "../x");
        // A run directory at the root names nothing worth a variable either.
        let m = Places::new(Some("/".into()), None, None);
        assert_eq!(m.word("/x"), "/x");
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn recorded_words_read_back_as_the_arguments_with_the_variables_set() {
        // The shell turns each word back into the argument, with RUNS and HOME set to the
        // machine's places: the line repeats the run.
        let m = machine();
        let args = [
            "main (logprob layer)=/data/runs/main",
            "/data/runs/it's",
            "/data/runs/$x\"y",
            "from:/data/runs/main/edits.jsonl",
            "/users/ann/.cache/m.gguf",
            "a 'b' c",
        ];
        let line: Vec<String> = args.iter().map(|a| m.word(a)).collect();
        let script = format!(
            "for a in {}; do printf '%s\\n' \"$a\"; done",
            line.join(" ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("RUNS", "/data/runs")
            .env("HOME", "/users/ann")
            .output()
            .unwrap();
        let got = String::from_utf8(out.stdout).unwrap();
        assert_eq!(got.lines().collect::<Vec<_>>(), args, "{line:?}");
    }
}
